"""train.py's training loop: the optimizer, one truncated-BPTT step, and one epoch of steps over a
Run (lm/trainrun.py), with the state that a checkpoint keeps so that --resume is exact."""
import math
import sys
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm import tqdm

from data import get_batch
from lm import cli, distributed, faults
from lm.checkpoint import LAST
from lm.decoder import Workspace
from lm.head import detach_hidden
from lm.optim import NO_SCALING, PROGRESS_SCHEDULES, sample_seq_len, scaled_lr, scheduled_lr
from lm.precision import autocast
from model import activation_regularization, temporal_activation_regularization


class DivergedError(cli.UserError):
    """Training's loss became inf, NaN or absurdly large: the run stops with advice, keeping its
    last checkpoint (nothing of the epoch under way is saved)."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so that --resume is exact."""
    epoch: int = 0  # epochs finished
    position: int = 0  # row of the training source where the next batch starts (0 at epoch start)
    batches: int = 0  # batches finished in the epoch under way (steps applied, see train_epoch)
    skipped_rows: int = 0  # rows of the epoch under way whose step fp16's loss scaling skipped
    lr: float = 0.0  # base lr of the plateau/constant schedules (annealed by plateau)
    best_val_loss: float = math.inf
    train_loss_sum: float = 0.0  # token-weighted loss of the epoch's batches so far
    train_tokens: int = 0
    seconds: float = 0.0  # training and validation time, summed over sessions
    finished: bool = False  # fine-tuning's stop criterion held


def make_optimizer(model, cfg):
    """The run's optimizer. Adam and AdamW use PyTorch's fused kernel on CPU and CUDA: one pass
    over each parameter and its moments, where the default for-loop version makes about ten on
    CPU (measured in the speed notes)."""
    params, lr, wd = list(model.parameters()), cfg["lr"], cfg["wdecay"]
    if cfg["optimizer"] in ("sgd", "nt-asgd"):
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    opt = torch.optim.Adam if cfg["optimizer"] == "adam" else torch.optim.AdamW
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    return opt(params, lr=lr, weight_decay=wd, betas=tuple(cfg["adam_betas"]), fused=fused)


def load_optimizer_state(optimizer, state):
    """Load a saved optimizer state but keep this optimizer's implementation: load_state_dict
    takes the saved param groups whole, flags included, so a run saved by an older version
    would otherwise resume without the fused kernel."""
    chosen = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, chosen, strict=True):
        group.update(flags)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


class Step(NamedTuple):
    ce: torch.Tensor  # the batch's mean cross-entropy, detached (no host sync)
    loss: torch.Tensor  # what was minimized: ce + AR + TAR, detached
    hidden: object  # the recurrent state for the next batch
    applied: bool = True  # False when the loss scaler skipped the update (inf/NaN gradients)


def train_step(model, x, y, hidden, optimizer, cfg, lr_factor=1.0, workspace=None, scaler=NO_SCALING):
    """One truncated-BPTT update of x, y (seq_len, batch) from `hidden`, with AR on the dropped
    last-layer output and TAR on the raw one, gradient clipping, and the lr scaled by
    lr_factor for this step only. model may be wrapped in DistributedDataParallel, whose
    backward averages the gradients over the processes before they are clipped. A Workspace
    kept by the caller saves re-allocating the loss's scratch memory. With an fp16 LossScaler
    the gradients are unscaled before clipping, and a step that overflowed is not applied."""
    with autocast(x.device, cfg["dtype"]):
        ce, out = model(x, detach_hidden(hidden), y, workspace)
        loss = (ce + activation_regularization(out.dropped, cfg["alpha"])
                + temporal_activation_regularization(out.raw, cfg["beta"]))
    optimizer.zero_grad(set_to_none=True)
    scaler.backward(loss)
    scaler.unscale_(optimizer)
    if cfg["clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
    with scaled_lr(optimizer, lr_factor):
        applied = scaler.step(optimizer)
    return Step(ce.detach(), loss.detach(), out.hidden, applied)


def progress_bar(run):
    """The epoch's bar; it counts the tokens of all processes, so its rate is training tokens/s."""
    tokens = (run.train_data.size(0) - 1) * run.cfg["batch_size"]
    return tqdm(total=tokens, initial=run.state.position * run.cfg["batch_size"], unit="tok", unit_scale=True,
                desc=f"epoch {run.state.epoch + 1}", dynamic_ncols=True, leave=False, disable=not run.world.main,
                mininterval=0.5 if sys.stderr.isatty() else 60)


def train_epoch(run, requested):
    """Train from row state.position to the end of the epoch, or until a stop: requested() (a
    Ctrl-C or SIGTERM) or the time budget, on any process. Returns whether a stop was requested.
    Updates run.state (position, batch count, loss sums over all processes) and run.hidden in
    place, and folds every new iterate into the NT-ASGD average once it is active."""
    cfg, state, model, source = run.cfg, run.state, run.model, run.train_data
    model.train()
    if state.position == 0:
        run.hidden = model.init_hidden(source.size(1))
    loss_sum = torch.tensor(state.train_loss_sum, dtype=torch.float64, device=source.device)
    workspace, bar = Workspace(), progress_bar(run)
    stop_requested = False
    while not run.epoch_done():
        seq_len = sample_seq_len(cfg["bptt"], run.lengths) if cfg["variable_bptt"] else cfg["bptt"]
        x, y = get_batch(source, state.position, seq_len)
        if cfg["schedule"] in PROGRESS_SCHEDULES:
            set_lr(run.optimizer, scheduled_lr(cfg["schedule"], cfg["lr"], run.progress(), cfg["warmup"]))
        if run.averaging.mode == "scheduled" and not run.averaging.active and run.progress() >= cfg["average_start"]:
            run.averaging.start(model, state.epoch)
        factor = x.size(0) / cfg["bptt"] if cfg["variable_bptt"] else 1.0
        step = train_step(run.net, x, y, run.hidden, run.optimizer, cfg, factor, workspace, run.scaler)
        run.hidden = step.hidden
        # A step that fp16's loss scaling skipped counts nowhere (average, batches and rows that the
        # schedules read, loss sums), but its rows are used up: the data moves on, training does not.
        if step.applied:
            run.averaging.after_step(model)
        counted = y.numel() if step.applied else 0
        ce_sum, n, (stop_requested, time_up, due), run.clock = distributed.step_sync(
            run.world, step.ce * counted if counted else torch.zeros_like(step.ce), counted,
            (requested(), run.time_up(), run.checkpoint_due()), run.elapsed())
        loss_sum += ce_sum
        state.train_tokens += n
        state.position += x.size(0)
        state.batches += step.applied
        state.skipped_rows += 0 if step.applied else x.size(0)
        bar.update(n)
        faults.point("batch")
        stop = stop_requested or time_up
        if state.batches % cfg["log_interval"] == 0 or stop:
            mean = checked_mean(loss_sum, state)
            bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.1f}")
        if stop:
            break
        if due:  # mid-epoch, as a stop would save
            keep_loss_sum(loss_sum, state)
            run.tick()
            run.save(LAST)
    bar.close()
    keep_loss_sum(loss_sum, state)
    return stop_requested


def keep_loss_sum(loss_sum, state):
    """Store the epoch's summed loss in the state that checkpoints save, after checking it."""
    checked_mean(loss_sum, state)
    state.train_loss_sum = loss_sum.item()


def checked_mean(loss_sum, state):
    """Mean training loss so far (a host sync); a NaN or inf stops the run with advice."""
    mean = loss_sum.item() / max(1, state.train_tokens)
    if not math.isfinite(mean):
        raise DivergedError(f"training loss is {mean} at epoch {state.epoch + 1}, "
                            f"batch {state.batches}; lower --lr or --clip")
    return mean
