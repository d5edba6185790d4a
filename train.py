"""Train a recurrent language model on words or characters: the classic baseline or AWD-LSTM.

    python train.py --data ../shared/data/wikitext-2 --epochs 6 --save checkpoints/wt2-small
    python train.py --level char --data ../shared/data/tinyshakespeare/input.txt --save checkpoints/shakespeare
    python train.py --preset awd-lstm-wt2 --data ../shared/data/wikitext-2 --save checkpoints/awd
    python train.py --finetune checkpoints/awd          # AWD-LSTM's second stage, into awd-finetune
    python train.py --resume checkpoints/wt2-small --epochs 10    # continue, possibly longer

The run directory gets model.pt (best validation loss; averaged weights once NT-ASGD averages),
last.pt (latest state, for --resume), metrics.jsonl (one line per epoch), config.json and, with --plot,
curves.png.
Ctrl-C or SIGTERM stops after the current batch and saves last.pt; --resume continues from exactly
there. With --checkpoint-every MINUTES, last.pt is also written mid-epoch, so that a run killed
outright (SIGKILL, power loss) resumes from its latest checkpoint with the same results.
"""
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data import DataError, batchify, get_batch, load_corpus
from lm import cli, distributed, faults
from lm.checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    append_metrics,
    build_checkpoint,
    check_vocab,
    has_run,
    kept_metrics,
    save_checkpoint,
    write_config,
    write_metrics,
)
from lm.config import ConfigError, model_config, resolve_config
from lm.decoder import Workspace
from lm.distributed import ONE_PROCESS, DistributedError
from lm.head import detach_hidden, map_hidden
from lm.memory import keep_freed_memory
from lm.optim import (
    NO_SCALING,
    PROGRESS_SCHEDULES,
    Averaging,
    LossScaler,
    planned_progress,
    sample_seq_len,
    scaled_lr,
    scheduled_lr,
)
from lm.plots import PlotError, plot_runs
from lm.precision import autocast
from lm.runlock import RunLock
from lm.scoring import Scores, evaluate
from model import (
    activation_regularization,
    build_model,
    config_from_dict,
    temporal_activation_regularization,
)

MAX_LOSS = 700.0  # nats per token; e**700 is near the float64 limit, and a loss this large has diverged


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
    CPU (results/bench-amx/fused-adam/)."""
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


class Run:
    """One training run: config, corpus, model, optimizer, training state, NT-ASGD averaging,
    the generator of sequence lengths, the recurrent state and the run directory. Built fresh
    (mode "new"), from last.pt ("resume"), or from a finished run's model.pt ("finetune").

    Under torchrun (world.active) each process holds its columns of the training batch and its
    own recurrent state and dropout masks; `net` is the model wrapped in DistributedDataParallel
    for the training steps, `model` the plain one that is evaluated, averaged and saved.

    Every check that can refuse comes before the first write into the run directory (start_writing):
    a refused command leaves the directory as it was."""

    def __init__(self, cfg, ckpt=None, mode="new", world=ONE_PROCESS, lock=None):
        self.cfg, self.mode, self.world = cfg, mode, world
        self.dir, self.lock = Path(cfg["save"]), lock or RunLock(cfg["save"], enabled=False)
        cli.check_folder(self.dir, "--save")
        self.device = torch.device(distributed.device(cfg["device"], world))
        if self.device.type == "cuda" and world.active:
            torch.cuda.set_device(self.device)
        self.corpus = load_corpus(cfg["data"], cfg["level"])
        if mode != "resume" and has_run(self.dir):
            raise ConfigError(f"{self.dir} already holds a run: pass --resume {self.dir} to continue "
                              "it, or choose another --save")
        if ckpt is not None:
            check_vocab(self.corpus, ckpt)
        torch.manual_seed(cfg["seed"])
        try:
            model_cfg = config_from_dict(ckpt["model_config"]) if ckpt else model_config(cfg, len(self.corpus.itos))
            self.model = build_model(model_cfg, cfg["lstm_kernel"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
        self.model.to(self.device)
        if world.rank > 0:  # the same initial weights everywhere, then each process's own masks
            torch.manual_seed(cfg["seed"] + world.rank)
        self.net = self.model
        if world.active:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                               else None)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scaler = LossScaler(self.device.type, enabled=cfg["dtype"] == "fp16")
        self.state = TrainState(lr=cfg["lr"])
        finetuning = mode == "finetune" or cfg.get("finetune")  # also when a fine-tuning run resumes
        averaging_mode = ("finetune" if finetuning else "scheduled" if cfg["average_start"] is not None
                          else "trigger" if cfg["optimizer"] == "nt-asgd" else "off")
        self.averaging = Averaging(averaging_mode, cfg["nonmono"])
        self.lengths = torch.Generator().manual_seed(cfg["seed"])  # variable-BPTT lengths, apart from masks
        self.hidden = None  # the recurrent state the next batch continues from
        if mode == "finetune":
            self.averaging.start(self.model, epoch=0)
        if mode == "resume":
            self.restore(ckpt, averaging_mode)
        self.train_data = distributed.columns(batchify(self.corpus.train, cfg["batch_size"], self.device), world)
        self.val_data = batchify(self.corpus.valid, cfg["eval_batch_size"], self.device)
        self.start_writing()
        self.mark = self.saved_at = time.time()  # state.seconds counts up to mark
        self.clock = self.state.seconds  # under torchrun: rank 0's training time at the last step

    def start_writing(self):
        """Rank 0, once the other checks have passed: the run's lock and metrics.jsonl are checked,
        then the directory is made, the lock taken and config.json and metrics.jsonl (cut back to
        the checkpoint) written. Under torchrun the other processes share a refusal here rather than
        wait for rank 0 until --dist-timeout."""
        problem = None
        if self.world.main:
            try:
                self.lock.check()
                metrics, note = kept_metrics(self.dir, self.state.epoch)
                self.dir.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
                write_config(self.dir, self.cfg)
                if metrics is not None:
                    write_metrics(self.dir, metrics)
                if note:
                    print(note, file=sys.stderr)
            except OSError as e:  # from mkdir
                problem = f"cannot make the run directory {self.dir}: {e.strerror or e}"
            except CheckpointError as e:
                problem = str(e)
        (problem,) = distributed.from_main(self.world, [problem])
        if problem:
            raise ConfigError(problem)

    def restore(self, ckpt, averaging_mode):
        load_optimizer_state(self.optimizer, ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt.get("scaler"))  # absent in runs saved before fp16
        self.state = TrainState(**ckpt["state"])
        self.averaging = Averaging.from_state_dict({"mode": averaging_mode, **ckpt["averaging"]}, self.device)
        if ckpt["hidden"] is not None:
            self.hidden = map_hidden(lambda h: h.to(self.device), distributed.split_columns(ckpt["hidden"], self.world))
        rng = ckpt["rng"]
        saved = len(rng.get("ranks", [None]))
        if saved != self.world.size:
            raise ConfigError(f"this run was trained by {saved} process{'es' if saved > 1 else ''}, which each "
                              f"keep their own random state; resume it with {saved} (torchrun --nproc-per-node "
                              f"{saved}{' or plain python' if saved == 1 else ''}), not {self.world.size}")
        own = rng["ranks"][self.world.rank] if self.world.active else rng
        torch.set_rng_state(own["cpu"])
        if own["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(own["cuda"])
        if "lengths" in rng:  # runs saved before the separate generator draw from a fresh one
            self.lengths.set_state(rng["lengths"])

    def rng_state(self):
        """The random generators' states (a collective under torchrun: every process's are kept)."""
        own = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        ranks = distributed.gather(self.world, own)
        return {**own, "lengths": self.lengths.get_state(), **({"ranks": ranks} if self.world.active else {})}

    def save(self, name):
        """Write model.pt (the weights just evaluated, averaged or not; no running average) or
        last.pt (everything, with the recurrent state when stopped mid-epoch). Every process
        calls it (the random states and recurrent states are gathered); rank 0 writes."""
        last = name == LAST
        hidden = distributed.join_columns(self.world, self.hidden) if last and self.state.position > 0 else None
        rng = self.rng_state()
        if self.world.main:
            ckpt = build_checkpoint(self.model, self.optimizer, self.cfg, self.corpus, asdict(self.state),
                                    self.averaging.state_dict(with_average=last), hidden, rng,
                                    self.scaler.state_dict())
            save_checkpoint(ckpt, self.dir / name)
        if last:
            self.saved_at = time.time()

    def say(self, text):
        """Print on rank 0 only."""
        if self.world.main:
            print(text, flush=True)

    def checkpoint_due(self):
        """Whether the batch just run is followed by a mid-epoch last.pt: --checkpoint-every's
        minutes have passed since the last one (or, in the fault tests, its batch count is due)."""
        every = self.cfg.get("checkpoint_every")
        return (faults.checkpoint_due(self.state.batches + 1)
                or every is not None and time.time() - self.saved_at >= 60 * every)

    def tick(self):
        """Fold the time since the last tick into state.seconds."""
        now = time.time()
        self.state.seconds += now - self.mark
        self.mark = now

    def elapsed(self):
        return self.state.seconds + time.time() - self.mark

    def time_up(self):
        """The budget counts training and validation time over all sessions of the run."""
        return self.cfg["max_minutes"] is not None and self.elapsed() >= 60 * self.cfg["max_minutes"]

    def epoch_done(self):
        """Whether the epoch under way has run all its batches (all rows, or --max-batches)."""
        max_batches = self.cfg["max_batches"] or math.inf
        return self.state.position >= self.train_data.size(0) - 1 or self.state.batches >= max_batches

    def progress(self):
        """Fraction of the planned training done, by batches actually run or by time."""
        part = (self.state.position - self.state.skipped_rows) / (self.train_data.size(0) - 1)
        if self.cfg["max_batches"]:
            part = max(part, self.state.batches / self.cfg["max_batches"])
        seconds = self.clock if self.world.active else self.elapsed()
        return planned_progress(self.state.epoch + part, self.cfg["epochs"], seconds, self.cfg["max_minutes"])

    def validate(self):
        """Validation scores of the weights that model.pt would hold (the average once active);
        under torchrun every process validates and all take rank 0's numbers."""
        with self.averaging.weights(self.model):
            scores = evaluate(self.model, self.val_data, self.cfg["val_dtype"])
        return Scores(*distributed.from_main(self.world, scores))


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
    workspace = Workspace()
    # The bar counts the tokens of all processes, so its rate is training tokens/s.
    tokens = (source.size(0) - 1) * cfg["batch_size"]
    bar = tqdm(total=tokens, initial=state.position * cfg["batch_size"], unit="tok", unit_scale=True,
               desc=f"epoch {state.epoch + 1}", dynamic_ncols=True, leave=False, disable=not run.world.main,
               mininterval=0.5 if sys.stderr.isatty() else 60)
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
        raise FloatingPointError(f"training loss is {mean} at epoch {state.epoch + 1}, "
                                 f"batch {state.batches}; lower --lr or --clip")
    return mean


def end_epoch(run, t0, tokens0):
    """Validate, log, update the schedule and NT-ASGD, and save; returns the metrics row."""
    cfg, state, level = run.cfg, run.state, run.corpus.level
    if not state.train_tokens:
        raise FloatingPointError(f"every step of epoch {state.epoch + 1} had inf/NaN gradients and was skipped by "
                                 "fp16's loss scaling; train with --dtype fp32, or bf16 where the hardware has it")
    train_seconds = time.time() - t0
    val = run.validate()
    improved = val.loss < state.best_val_loss
    train_loss = state.train_loss_sum / state.train_tokens
    for name, loss in (("training", train_loss), ("validation", val.loss)):
        if not loss < MAX_LOSS:  # also NaN
            raise FloatingPointError(f"{name} loss is {loss:.4g} at the end of epoch {state.epoch + 1}: training "
                                     "diverged; lower --lr or --clip (nothing of this epoch was saved)")
    row = {"epoch": state.epoch + 1, "train_loss": train_loss, "train_ppl": math.exp(train_loss),
           "val_loss": val.loss, "val_ppl": math.exp(val.loss), "val_accuracy": val.accuracy,
           **({"train_bpc": train_loss / math.log(2), "val_bpc": val.bits} if level == "char" else {}),
           "lr": run.optimizer.param_groups[0]["lr"], "averaged": run.averaging.active,
           "train_tokens": state.train_tokens,
           "epoch_seconds": round(time.time() - t0, 2), "minutes": round(run.elapsed() / 60, 4),
           "train_tokens_per_s": round((state.train_tokens - tokens0) / train_seconds, 1),
           **({"partial": True} if run.time_up() else {})}
    faults.point("validated")
    state.epoch, state.position, state.batches, state.skipped_rows = state.epoch + 1, 0, 0, 0
    state.train_loss_sum, state.train_tokens = 0.0, 0
    if cfg["schedule"] == "plateau" and not improved:
        state.lr /= cfg["anneal"]
        set_lr(run.optimizer, state.lr)
    note, state.finished = run.averaging.end_of_epoch(run.model, val.loss, state.epoch)
    if run.averaging.active and run.averaging.count == 0:
        faults.point("averaging")
    run.tick()
    if improved:
        state.best_val_loss = val.loss
        with run.averaging.weights(run.model):  # the weights that were just evaluated
            run.save(BEST)
        faults.point("best-saved")
    if run.world.main:
        append_metrics(run.dir, row)  # before last.pt: a resume from the previous last.pt drops this line again
    faults.point("logged")
    run.save(LAST)
    val_text = (f"val bpc {row['val_bpc']:.4f} | val acc {val.accuracy:.2%}" if level == "char"
                else f"val ppl {row['val_ppl']:8.2f}")
    run.say(f"epoch {state.epoch:3d} | train loss {train_loss:.4f} | val loss {val.loss:.4f} | {val_text} | "
            f"lr {row['lr']:.4g} | {row['epoch_seconds']:.0f}s" + (" | saved best" if improved else "")
            + (f" | {note}" if note else "") + (" | time budget reached" if row.get("partial") else ""))
    return row


def fit(cfg, ckpt=None, mode="new", world=ONE_PROCESS, lock=None):
    """Train according to cfg; returns 0 when finished and 130 when stopped by Ctrl-C. lock:
    the run directory's RunLock, held by the caller (none: no lock)."""
    run = Run(cfg, ckpt, mode, world, lock)
    nparams = sum(p.numel() for p in run.model.parameters())
    unit = "characters" if run.corpus.level == "char" else "words"
    processes = f" | {world.size} processes" if world.active else ""
    run.say(f"{run.corpus.source}: {len(run.corpus.itos):,} {unit}, {len(run.corpus.train):,} train tokens | "
            f"{nparams:,} parameters | {run.device}, {cfg['dtype']}{processes} | run dir {run.dir}")
    if mode == "finetune":  # the model must beat its own starting point to be saved
        run.state.best_val_loss = run.validate().loss
        run.say(f"fine-tuning from val ppl {math.exp(run.state.best_val_loss):.2f}")
    with cli.StopOnInterrupt() as stop:
        while (run.state.epoch < cfg["epochs"] and not run.state.finished
               and not distributed.any_rank(world, run.time_up(), run.device)):
            t0, tokens0 = time.time(), run.state.train_tokens
            requested = train_epoch(run, lambda: stop.requested)
            if requested and not run.epoch_done():  # mid-epoch: last.pt keeps the recurrent state
                run.tick()
                run.save(LAST)
                run.say(f"stopped in epoch {run.state.epoch + 1} after batch {run.state.batches}; resume "
                        f"with python train.py --resume {run.dir}")
                return 130
            end_epoch(run, t0, tokens0)
            if distributed.any_rank(world, stop.requested, run.device):
                run.say(f"stopped after epoch {run.state.epoch}; resume with python train.py --resume {run.dir}")
                return 130
    distributed.check_identical(world, dict(run.model.named_parameters()), "weights")
    distributed.check_identical(world, run.averaging.average, "averaged weights")
    run.say(f"done: best val loss {run.state.best_val_loss:.4f} (ppl {math.exp(run.state.best_val_loss):.2f}) | "
            f"{run.state.seconds / 60:.1f} min | evaluate with python evaluate.py {run.dir}")
    if cfg["plot"] and world.main:
        draw_run(run.dir)
    return 0


def draw_run(run_dir):
    """The run's own curves.png; plotting trouble is a warning, since training has finished."""
    try:
        plot_runs([run_dir], run_dir / "curves.png")
        print(f"curves: {run_dir / 'curves.png'}")
    except (ImportError, PlotError) as e:
        print(f"warning: no curves.png: {e}", file=sys.stderr)


@cli.user_errors
def main(argv=None):
    world = ONE_PROCESS
    keep_freed_memory()  # large per-step buffers reused, not page-faulted in anew (README: Speed)
    try:
        world = distributed.world_from_env()
        cfg, ckpt, mode = resolve_config(argv, __doc__)
        if cfg["batch_size"] % world.size:
            raise ConfigError(f"--batch-size {cfg['batch_size']} is the global batch and does not split over "
                              f"{world.size} processes; make it a multiple of {world.size}")
        if world.main:
            print(json.dumps(cfg, indent=2))
        if world.active and distributed.device(cfg["device"], world) == "cpu":
            torch.set_num_threads(distributed.cpu_threads(world))
        distributed.setup(world, torch.device(cfg["device"]).type, cfg["dist_timeout"])
        with RunLock(cfg["save"], enabled=world.main) as lock:  # only rank 0 writes
            return fit(cfg, ckpt, mode, world, lock)
    except (ConfigError, CheckpointError, DataError, FloatingPointError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.distributed.DistError as e:  # another process failed or vanished
        print(f"error: rank {world.rank}: lost contact with the other processes ({cli.first_line(e)})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: aborted by a second Ctrl-C, without saving; last.pt holds the run's latest checkpoint",
              file=sys.stderr)
        return 130
    finally:
        distributed.teardown(world)


if __name__ == "__main__":
    distributed.exit_process(main())
