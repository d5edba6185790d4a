"""Optimization pieces of AWD-LSTM (Merity et al. 2017) and the schedules of train.py.

- NT-ASGD (Section 3): SGD whose iterates start being averaged once validation stops improving
  by the non-monotone criterion; evaluation then uses the average.
- Variable-length BPTT (Section 4.1) and its per-step learning-rate rescaling.
- Learning-rate schedules for the Adam/AdamW recipe (warm-up, then cosine or one-cycle).
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
