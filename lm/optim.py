"""Optimization pieces of AWD-LSTM (Merity et al. 2017) and the schedules of train.py.

- NT-ASGD (Section 3): SGD whose iterates start being averaged once validation stops improving
  by the non-monotone criterion; evaluation then uses the average.
- Variable-length BPTT (Section 4.1) and its per-step learning-rate rescaling.
- Learning-rate schedules for the Adam/AdamW recipe (warm-up, then cosine or one-cycle).
- fp16's loss scaling, with the steps that it skips reported to the caller.
"""
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch


def nonmonotone_trigger(history, val_loss, nonmono):
    """The NT-ASGD criterion: val_loss is worse than the best of the validation losses recorded
    more than `nonmono` epochs ago. `history` holds the earlier epochs' losses, oldest first;
    False until more than `nonmono` of them exist."""
    return len(history) > nonmono and val_loss > min(history[:-nonmono])


@dataclass
class Averaging:
    """NT-ASGD's averaging (Section 3), all of its bookkeeping and everything an exact resume
    needs. train.py calls after_step after every optimizer step, weights() around validation
    and saving, and end_of_epoch after each validation.

    Which iterates: with w_T the weights when averaging starts (at the end of the epoch where
    the trigger holds, or before fine-tuning's first step), the average is the plain mean of
    w_{T+1} .. w_k, the weights right after each optimizer step since then. Each of those steps
    is an SGD step at its own lr, scaled by its own variable-BPTT factor (seq_len / bptt). The
    original code's torch.optim.ASGD differs in two small ways: its average holds w_{T+2} .. w_k
    (its first two steps both copy the weights), and each step uses the previous step's lr
    factor (ASGD steps with an eta that it computes from the lr at the end of the step before).

    mode:     "trigger" (nt-asgd: start averaging when the non-monotone criterion first holds),
              "scheduled" (start before the first step at or past a fixed fraction of the planned
              training, train.py's --average-start; any optimizer), "finetune" (average from the
              first step; stop when the criterion holds) or "off"
    nonmono:  the criterion's window, in epochs
    history:  validation loss of every finished epoch, oldest first (raw weights before the
              trigger, averaged weights after it)
    started:  None until averaging starts; then the number of epochs finished when it started
              (0 for fine-tuning)
    count:    iterates in the running average
    average:  parameter name -> running mean of that parameter over the `count` iterates
    """
    mode: str
    nonmono: int
    history: list = field(default_factory=list)
    started: int = None
    count: int = 0
    average: dict = field(default_factory=dict)

    @property
    def active(self):
        return self.started is not None

    def start(self, model, epoch):
        self.started, self.count = epoch, 0
        self.average = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def after_step(self, model):
        """Fold the weights after an optimizer step into the running mean, once active:
        avg += (w - avg) / count."""
        if not self.active:
            return
        self.count += 1
        for name, p in model.named_parameters():
            self.average[name].lerp_(p, 1.0 / self.count)

    def end_of_epoch(self, model, val_loss, epoch):
        """Apply the non-monotone criterion to this epoch's validation loss; returns (note for
        the log, whether training is finished)."""
        trigger = nonmonotone_trigger(self.history, val_loss, self.nonmono)
        self.history.append(val_loss)
        if self.mode == "finetune" and trigger:
            return "fine-tuning done (non-monotone criterion)", True
        if self.mode == "trigger" and not self.active and trigger:
            self.start(model, epoch)
            return "NT-ASGD: averaging starts", False
        return "", False

    @contextmanager
    def swapped_in(self, model):
        """Run the body with the averaged weights in the model, then put the raw ones back."""
        params = dict(model.named_parameters())
        raw = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.average[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(raw[n])

    def weights(self, model):
        """The weights to evaluate and save: the average once it holds an iterate, else the raw ones."""
        return self.swapped_in(model) if self.active and self.count else nullcontext()

    def state_dict(self, with_average=True):
        """Plain data for a checkpoint; model.pt leaves the average out (with_average=False),
        since its weights are already the ones that were evaluated."""
        return {"mode": self.mode, "nonmono": self.nonmono, "history": list(self.history),
                "started": self.started, "count": self.count,
                "average": self.average if with_average else {}}

    @classmethod
    def from_state_dict(cls, d, device):
        d = {**d, "average": {k: v.to(device) for k, v in d["average"].items()}}
        return cls(**d)


def sample_seq_len(bptt, generator=None):
    """Variable-length BPTT (Section 4.1): the base length is bptt with probability 0.95, else
    bptt / 2; the length is drawn from N(base, 5) and truncated to an int, then kept in
    [5, bptt + 20] (the cap is four standard deviations above bptt, against rare huge draws)."""
    base = bptt if torch.rand((), generator=generator).item() < 0.95 else bptt / 2
    seq_len = int(base + 5 * torch.randn((), generator=generator).item())
    return min(max(5, seq_len), bptt + 20)


@contextmanager
def scaled_lr(optimizer, factor):
    """Scale every group's lr by `factor` for one step, then restore it. With variable-length
    BPTT the factor is seq_len / bptt, so that short sequences do not get outsized updates."""
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] *= factor
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, saved, strict=True):
            g["lr"] = lr


PROGRESS_SCHEDULES = ("cosine", "onecycle", "onecycle-flat")  # the lr follows planned_progress


def scheduled_lr(schedule, base_lr, progress, warmup):
    """The lr at `progress` in [0, 1] of all training, for the schedules that depend on it.

    cosine:   linear warm-up from 0 over the first `warmup` fraction, then cosine decay to 0
    onecycle: linear warm-up from base_lr/25 to base_lr, then cosine decay to base_lr/1e4
              (Smith's one-cycle policy, as in torch's OneCycleLR)
    onecycle-flat: the fast AWD-LSTM recipe's four phases (sgugger/Adam-experiments, utils.py's
              get_phases with div 10 and 7.5/37.5/37.5/7.5 of 90 epochs for warmup 1/12): linear
              from base_lr/10 to base_lr over `warmup`, flat to half-way, linear down to
              base_lr/10 until 1 - warmup, then a cosine from there to 0
    """
    if schedule == "onecycle-flat":
        return _flat_onecycle(base_lr, progress, warmup)
    low, end = (0.0, 0.0) if schedule == "cosine" else (base_lr / 25, base_lr / 1e4)
    if progress < warmup:
        return low + (base_lr - low) * progress / warmup
    q = min(1.0, (progress - warmup) / max(1e-12, 1 - warmup))
    return end + (base_lr - end) * 0.5 * (1 + math.cos(math.pi * q))


def _flat_onecycle(base_lr, progress, warmup):
    """onecycle-flat of scheduled_lr; warmup < 0.5."""
    low = base_lr / 10
    if progress < warmup:
        return low + (base_lr - low) * progress / warmup
    if progress < 0.5:
        return base_lr
    if progress < 1 - warmup:
        return base_lr - (base_lr - low) * (progress - 0.5) / (0.5 - warmup)
    q = min(1.0, (progress - (1 - warmup)) / max(1e-12, warmup))
    return low * 0.5 * (1 + math.cos(math.pi * q))


def planned_progress(epochs_done, epochs, seconds, max_minutes):
    """How far a run is through its planned training, in [0, 1], for the cosine and one-cycle
    schedules: the fraction of --epochs done (epochs_done counts the part of the current epoch
    that has run), or of the --max-minutes budget, whichever is further along."""
    by_time = seconds / (60 * max_minutes) if max_minutes else 0.0
    return min(1.0, max(epochs_done / epochs, by_time))


class LossScaler:
    """Loss scaling for fp16 training (torch.amp.GradScaler), off for fp32 and bf16. The loss is
    multiplied by the scale before backward, so that small gradients do not flush to zero in
    fp16, and the gradients are divided by it again (unscale) before they are clipped. A step
    whose gradients hold an inf or a NaN is skipped: the optimizer leaves the weights and its
    own state as they were, and the scale is halved; after `growth_interval` good steps in a
    row it is doubled. step() says whether the step was applied, so that the caller counts only
    the steps that were (optim.Averaging, the lr schedules)."""

    def __init__(self, device_type, enabled, **options):
        self.scaler = torch.amp.GradScaler(device_type, enabled=enabled, **options)
        self.scale = None  # the scale after the last update, as read back then

    @property
    def enabled(self):
        return self.scaler.is_enabled()

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer):
        """Divide the gradients by the scale in place (before clipping)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer):
        """optimizer.step() unless the gradients overflowed; returns whether it was applied.
        With scaling on, this reads the new scale back to the host: one sync per step."""
        if not self.enabled:
            optimizer.step()
            return True
        before = self.scaler.get_scale() if self.scale is None else self.scale
        self.scaler.step(optimizer)
        self.scaler.update()
        self.scale = self.scaler.get_scale()
        return self.scale >= before  # update() lowers the scale exactly when it skipped the step

    def state_dict(self):
        """The scale and its growth counter (plain data), or None when scaling is off."""
        return self.scaler.state_dict() if self.enabled else None

    def load_state_dict(self, state):
        """Continue from a saved state; None (a run saved without scaling, or before it existed)
        starts from the initial scale."""
        if state and self.enabled:
            self.scaler.load_state_dict(state)
            self.scale = None


NO_SCALING = LossScaler("cpu", enabled=False)  # train_step's default: fp32 and bf16 steps
