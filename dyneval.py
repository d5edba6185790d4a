"""Dynamic evaluation (Krause, Kahembwe, Murray and Renals 2018, "Dynamic Evaluation of Neural
Sequence Models"): the model keeps learning from the text it is scoring. Their RMS variant with
a decay towards the trained weights θ0 ("RMS with an RMS global prior"):

1. Gradient statistics. On the training data, in eval mode (no dropout), in segments of `bptt`
   tokens: MS = sqrt(mean over segments of g^2), per parameter entry, with g the gradient of
   the segment's mean loss.
2. Evaluation, at batch 1 and in segments of `bptt` tokens: score the segment first, then take
   one step on its mean loss g:

       θ <- θ + lam * r ⊙ (θ0 - θ) - lr * g / (MS + epsilon)

   with decay rates r = min(MS / mean_MS, 1 / lam). mean_MS is the mean over parameter tensors of
   each tensor's mean MS, as in the published code (github.com/benkrause/dynamic-evaluation).

The recurrent state is carried from segment to segment, as in plain evaluation. The model's
weights are θ0 again when dynamic_evaluate returns, whatever happened inside it.
"""
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm import tqdm

from data import get_batch
from kernels import Workspace, autocast
from model import detach_hidden


@dataclass(frozen=True)
class DynamicSettings:
    lr: float  # the step size eta
    lam: float  # the decay towards the trained weights
    epsilon: float
    bptt: int = 5  # tokens per segment: one update each


# Published settings for AWD-LSTM. PTB: dynamiceval.py's defaults, tuned for AWD-LSTM on PTB.
# WikiText-2: its README's command for the paper's AWD-LSTM result (lr 0.002, lamb 0.02, epsilon
# 0.001 with --oldhyper), converted to the current equations as --oldhyper does: lamb divided by
# the 14 parameter tensors of AWD-LSTM, lr and epsilon by the square root of the 4,177 statistics
# segments of WikiText-2's training data (batch 100, 5 tokens).
DYNAMIC_DEFAULTS = {
    "wikitext-2": DynamicSettings(lr=0.002 / 4177 ** 0.5, lam=0.02 / 14, epsilon=0.001 / 4177 ** 0.5),
    "ptb": DynamicSettings(lr=5e-5, lam=0.002, epsilon=2e-5),
}
STAT_BATCH_SIZE = 100  # columns of the training data for the statistics, as in the published code


def check_settings(s, stat_batches):
    """A one-line reason why these settings cannot run, or None."""
    if s.lr < 0:
        return f"--dyn-lr must not be negative, got {s.lr}"
    if not 0 <= s.lam <= 1:
        return f"--dyn-lambda must be in [0, 1], got {s.lam}"
    if not s.epsilon > 0:
        return f"--dyn-epsilon must be positive, got {s.epsilon}"
    if s.bptt < 1:
        return f"--dyn-bptt must be at least 1, got {s.bptt}"
    if stat_batches is not None and stat_batches < 1:
        return f"--dyn-stat-batches must be at least 1, got {stat_batches}"
    return None


def segments(source, bptt):
    """Start rows of the bptt-token segments of a batchified source."""
    return range(0, source.size(0) - 1, bptt)


def gradient_statistics(model, source, bptt, max_batches=None, dtype="fp32", progress=False):
    """MS per parameter (name -> tensor): the root mean square of the gradients of the mean loss
    of bptt-token segments of source (rows, batch), in eval mode, over its first max_batches
    segments (all when None). Leaves the weights as they were and no gradients behind."""
    model.eval()
    params = dict(model.named_parameters())
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    starts = segments(source, bptt)[:max_batches]
    hidden, workspace = model.init_hidden(source.size(1)), Workspace()
    for i in tqdm(starts, desc="gradient statistics", unit="seg", disable=not progress, leave=False,
                  mininterval=0.5 if sys.stderr.isatty() else 60):
        x, y = get_batch(source, i, bptt)
        with autocast(x.device, dtype):
            ce, out = model.loss(x, y, detach_hidden(hidden), workspace)
        model.zero_grad(set_to_none=False)
        ce.backward()
        for n, p in params.items():
            sums[n].addcmul_(p.grad, p.grad)
        hidden = out.hidden
    model.zero_grad(set_to_none=True)
    return {n: (s / len(starts)).sqrt_() for n, s in sums.items()}


class Adaptation:
    """The update rule with its per-entry constants, made once from MS. With the decay
    d = lam * r, the step is θ <- θ ⊙ (1 - d) + d ⊙ θ0 - (lr / (MS + epsilon)) ⊙ g: two passes over
    the weights, with no allocation. restore() puts θ0 back."""

    def __init__(self, model, ms, settings):
        self.params = [p for _, p in model.named_parameters()]
        ms = [ms[n] for n, _ in model.named_parameters()]
        mean_ms = sum(m.mean() for m in ms) / len(ms)
        s = settings
        decay = [(m / mean_ms).clamp_(max=1 / s.lam).mul_(s.lam) if s.lam > 0 else torch.zeros_like(m) for m in ms]
        self.theta0 = [p.detach().clone() for p in self.params]
        self.keep = [1 - d for d in decay]
        self.pull = [d * t for d, t in zip(decay, self.theta0, strict=True)]
        self.neg_step = [-s.lr / (m + s.epsilon) for m in ms]

    @torch.no_grad()
    def step(self):
        for p, keep, pull, neg_step in zip(self.params, self.keep, self.pull, self.neg_step, strict=True):
            torch.addcmul(pull, p, keep, out=p)
            p.addcmul_(neg_step, p.grad)

    @torch.no_grad()
    def restore(self):
        torch._foreach_copy_(self.params, self.theta0)


@contextmanager
def adapting(model, ms, settings):
    """An Adaptation of model for the body; θ0 is back in the model afterwards, even on error."""
    adaptation = Adaptation(model, ms, settings)
    try:
        yield adaptation
    finally:
        adaptation.restore()
        model.zero_grad(set_to_none=True)


# At batch 1 and 5 steps with gradients, our recurrence runs an AWD-LSTM layer's forward and
# backward 2.1-2.4x faster than oneDNN's, which reorders the weights on every call (README).
DYNAMIC_LSTM_KERNEL = "own"


def dynamic_evaluate(model, source, ms, settings, dtype="fp32", progress=False):
    """(mean nats per token, accuracy) of source (rows, batch) under dynamic evaluation from the
    model's current weights θ0, which it holds again on return."""
    model.eval()
    hidden, workspace = model.init_hidden(source.size(1)), Workspace()
    nats = torch.zeros((), dtype=torch.float64, device=source.device)
    correct = torch.zeros((), dtype=torch.float64, device=source.device)
    starts = segments(source, settings.bptt)
    with adapting(model, ms, settings) as adaptation, model.lstm_kernel(DYNAMIC_LSTM_KERNEL):
        for i in tqdm(starts, desc="dynamic evaluation", unit="seg", disable=not progress, leave=False,
                      mininterval=0.5 if sys.stderr.isatty() else 60):
            x, y = get_batch(source, i, settings.bptt)
            with autocast(x.device, dtype):
                ce, n, c, out = model.scored_loss(x, y, detach_hidden(hidden), workspace)
            nats += n  # scored before the update that learns from it
            correct += c
            model.zero_grad(set_to_none=False)
            ce.backward()
            adaptation.step()
            hidden = out.hidden
    tokens = (source.size(0) - 1) * source.size(1)
    return nats.item() / tokens, correct.item() / tokens
