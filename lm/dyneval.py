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
weights are θ0 again when dynamic_evaluate returns, whatever happened inside it. A pass of WikiText-2
test takes more than an hour on a CPU; with a PassFile it outlives its process: it is saved now
and then, and when stopped, and a later pass of the same job continues where it was.
"""
import functools
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import corpus_name, get_batch
from lm import cli, faults
from lm.checkpoint import save_file
from lm.cli import UserError
from lm.decoder import LowRankGradient, Workspace, log_prob_scores
from lm.head import detach_hidden, map_hidden
from lm.passfile import PassFile, digest, load_keyed, pass_key
from lm.precision import autocast
from lm.scoring import Scores, zeros


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
    """Refuse settings that cannot run."""
    if s.lr < 0:
        raise UserError(f"--dyn-lr must not be negative, got {s.lr}")
    if not 0 <= s.lam <= 1:
        raise UserError(f"--dyn-lambda must be in [0, 1], got {s.lam}")
    if not s.epsilon > 0:
        raise UserError(f"--dyn-epsilon must be positive, got {s.epsilon}")
    if s.bptt < 1:
        raise UserError(f"--dyn-bptt must be at least 1, got {s.bptt}")
    if stat_batches is not None and stat_batches < 1:
        raise UserError(f"--dyn-stat-batches must be at least 1, got {stat_batches}")


def make_settings(data, lr=None, lam=None, epsilon=None, bptt=5, stat_batches=None):
    """The DynamicSettings of evaluate.py's flags for the corpus `data` (a hub name or folder);
    settings not given come from the corpus's entry in DYNAMIC_DEFAULTS (PTB's, the published
    code's defaults, for other corpora)."""
    known = DYNAMIC_DEFAULTS.get(corpus_name(data), DYNAMIC_DEFAULTS["ptb"])
    given = {"lr": lr, "lam": lam, "epsilon": epsilon}
    settings = DynamicSettings(**{k: getattr(known, k) if v is None else v for k, v in given.items()}, bptt=bptt)
    check_settings(settings, stat_batches)
    return settings


def segments(source, bptt):
    """Start rows of the bptt-token segments of a batchified source."""
    return range(0, source.size(0) - 1, bptt)


# How AWD-LSTM's layers run here (WeightDropLSTM's kernels), chosen by measurement (see
# docs/speed.md): at batch 1 and 5 steps with gradients our recurrence beats oneDNN, which
# reorders the weights on every call; for the statistics (100 x 5 tokens) it is faster in fp32,
# and "auto" in bf16.
DYNAMIC_LSTM_KERNEL = "own"
STATS_LSTM_KERNEL = {"fp32": "own", "bf16": "auto"}


def gradient_statistics(model, source, bptt, max_batches=None, dtype="fp32", progress=False):
    """MS per parameter (name -> tensor): the root mean square of the gradients of the mean loss
    of bptt-token segments of source (rows, batch), in eval mode, over its first max_batches
    segments (all when None). Leaves the weights as they were and no gradients behind."""
    model.eval()
    params = dict(model.named_parameters())
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    starts = segments(source, bptt)[:max_batches]
    hidden, workspace = model.init_hidden(source.size(1)), Workspace()
    with model.lstm_kernel(STATS_LSTM_KERNEL[dtype]):
        for i in tqdm(starts, desc="gradient statistics", unit="seg", disable=not progress, leave=False,
                      mininterval=0.5 if sys.stderr.isatty() else 60):
            x, y = get_batch(source, i, bptt)
            with autocast(x.device, dtype):
                ce, out = model.loss(x, y, detach_hidden(hidden), workspace)
            for s, g in zip(sums.values(), torch.autograd.grad(ce, list(params.values())), strict=True):
                s.addcmul_(g, g)
            hidden = out.hidden
    return {n: (s / len(starts)).sqrt_() for n, s in sums.items()}


STATS_FORMAT = 1  # of the files that statistics() keeps


def statistics(model, source, bptt, max_batches=None, dtype="fp32", progress=False, path=None):
    """gradient_statistics, kept in the file at path (when given) for the next split or run: read
    from it when it was made from these weights, training data and settings, else computed and
    written there (atomically). A file made for anything else is a DataError, not overwritten."""
    if path is None:
        return gradient_statistics(model, source, bptt, max_batches, dtype, progress)
    path = Path(path)
    key = {"weights": digest(p for _, p in sorted(model.named_parameters())), "data": digest([source]),
           "bptt": bptt, "stat_batches": max_batches, "dtype": dtype}
    if path.exists():
        return load_keyed(path, STATS_FORMAT, key, needs=("ms",), what="gradient statistics from",
                          advice="delete it, and they are computed again", holds="gradient statistics of",
                          flag="--dyn-stats", map_location=source.device)["ms"]
    ms = gradient_statistics(model, source, bptt, max_batches, dtype, progress)
    save_file({"format": STATS_FORMAT, "key": key, "ms": ms}, path)
    return ms


def _update_in_one_pass(params, theta0, ms, grads, lam_over_mean, lr, epsilon):
    """The update rule as one expression per tensor, for torch.compile: the decay
    min(lam MS / mean_MS, 1) and the step lr / (MS + epsilon) are derived from MS inside the
    pass, so the compiled kernel reads θ, θ0, MS and g once and writes θ (20 bytes per entry,
    against 32 for Adaptation's two eager passes over stored constants). The scalars are 0-dim
    tensors, so that other settings (tune.py's grid) reuse the compiled kernel.

    An entry of grads may be the pair (left, right) of a rank-k gradient left.T @ right (the
    parts of a decoder.LowRankGradient, left (k, vocab), right (k, d)): each of its entries is
    formed in the pass from k products, so the (vocab, d) gradient is never written nor read,
    and the pass reads 12 bytes per entry and writes 4."""
    for p, t, m, g in zip(params, theta0, ms, grads, strict=True):
        if isinstance(g, tuple):
            left, right = g
            g = (left.t().float()[:, :, None] * right.float()[None]).sum(1)  # (vocab, k, d) summed over k
        p.copy_(p + (m * lam_over_mean).clamp(max=1) * (t - p) - lr * g / (m + epsilon))


@functools.cache
def _compiled_update():
    """torch.compile of _update_in_one_pass, made once per process (it compiles on its first call)."""
    return torch.compile(_update_in_one_pass, dynamic=False)


# Models with at least this many parameters get the compiled update, where the time it saves on
# every segment soon repays its compiling (measured; see docs/speed.md); smaller ones run eagerly.
COMPILED_UPDATE_MIN_PARAMS = 1 << 22


class Adaptation:
    """The update rule with its per-entry constants, made once from MS. With the decay
    d = min(lam * MS / mean_MS, 1), the step is θ <- θ + d ⊙ (θ0 - θ) - lr g / (MS + epsilon).
    compiled=False runs it eagerly as θ <- θ ⊙ (1 - d) + d ⊙ θ0 - (lr / (MS + epsilon)) ⊙ g from
    stored constants: two passes over the weights, with no allocation. Models of
    COMPILED_UPDATE_MIN_PARAMS or more run it as one pass compiled by torch.compile (see
    _update_in_one_pass), or eagerly when compiling fails (with a warning). step(grads) takes g in
    the order of model.parameters(), each a tensor or a decoder.LowRankGradient (as
    LanguageModel.gradients gives them); restore() puts θ0 back."""

    def __init__(self, model, ms, settings):
        self.params = [p for _, p in model.named_parameters()]
        self.ms = [ms[n] for n, _ in model.named_parameters()]
        s = settings
        self.rank = s.bptt  # of a segment's LowRankGradient: a shorter last segment's is padded
        self.dense_grad = None  # the eager update's buffer for a LowRankGradient made whole
        self.theta0 = [p.detach().clone() for p in self.params]
        mean_ms = sum(m.mean() for m in self.ms) / len(self.ms)
        self.scalars = [torch.as_tensor(v, dtype=torch.float32, device=self.params[0].device)
                        for v in (s.lam / mean_ms, s.lr, s.epsilon)]
        self.compiled = sum(p.numel() for p in self.params) >= COMPILED_UPDATE_MIN_PARAMS
        if not self.compiled:
            self._make_constants()

    def _make_constants(self):
        lam_over_mean, lr, epsilon = self.scalars
        decay = [(m * lam_over_mean).clamp_(max=1) for m in self.ms]
        self.keep = [1 - d for d in decay]
        self.pull = [d * t for d, t in zip(decay, self.theta0, strict=True)]
        self.neg_step = [-lr / (m + epsilon) for m in self.ms]

    @torch.no_grad()
    def step(self, grads):
        grads = list(grads)
        i = next((k for k, g in enumerate(grads) if isinstance(g, LowRankGradient)), None)
        low_rank = None if i is None else grads[i]
        if self.compiled:
            try:
                if i is not None:
                    grads[i] = self._padded_parts(low_rank)
                _compiled_update()([p.detach() for p in self.params], self.theta0, self.ms, grads, *self.scalars)
                if i is not None:
                    self._step_rows(i, low_rank)
                return
            except Exception as e:  # noqa: BLE001 - no compiler here: the same update, eagerly
                print(f"warning: dynamic evaluation's compiled update failed ({cli.first_line(e)}); "
                      "running it eagerly", file=sys.stderr)
                self.compiled = False
                self._make_constants()
        if i is not None:
            if self.dense_grad is None:
                self.dense_grad = torch.empty_like(self.params[i])
            grads[i] = low_rank.dense(self.dense_grad)
        for p, g, keep, pull, neg_step in zip(self.params, grads, self.keep, self.pull, self.neg_step, strict=True):
            torch.addcmul(pull, p, keep, out=p)
            p.addcmul_(neg_step, g)

    def _padded_parts(self, low_rank):
        """(left, right) with `rank` rows each, a shorter segment's padded with zero rows, so that
        the compiled update sees one shape and compiles once."""
        left, right = low_rank.left, low_rank.right
        short = self.rank - left.size(0)
        return (left, right) if short <= 0 else (F.pad(left, (0, 0, 0, short)), F.pad(right, (0, 0, 0, short)))

    def _step_rows(self, i, low_rank):
        """The step's part from the embedding lookup's gradient rows, after the pass over the
        low-rank part: the step is linear in g, so adding it to the rows afterwards is the same
        update (to rounding)."""
        if low_rank.ids is not None:
            p, m = self.params[i].detach(), self.ms[i][low_rank.ids]
            _, lr, epsilon = self.scalars
            p.index_add_(0, low_rank.ids, low_rank.rows.to(p.dtype) * (-lr / (m + epsilon)))

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


@torch.no_grad()
def _continue(saved, model, cache, device):
    """Put a saved pass's adapted weights into the model and its memory into the cache; returns
    its (hidden state, nats, correct, segments done)."""
    for name, p in model.named_parameters():
        p.copy_(saved["weights"][name])
    if cache is not None:
        cache.load_state_dict({k: v.to(device) if torch.is_tensor(v) else v for k, v in saved["cache"].items()})
    hidden = map_hidden(lambda h: h.to(device), saved["hidden"])
    return hidden, saved["nats"].to(device), saved["correct"].to(device), saved["segment"]


def _segment(model, adaptation, x, y, hidden, dtype, workspace, cache):
    """One segment: its (summed nats, correct predictions), scored (under the cache's mixture,
    when given) before the step that learns from its loss, and the new hidden state."""
    with autocast(x.device, dtype):
        segment = model.gradients(x, y, hidden, workspace)
    chunks = [(0, segment.log_probs)]  # the segment's rows in one chunk, whole time steps
    scored = log_prob_scores(chunks, y.reshape(-1)) if cache is None else cache.score(segment.out.raw, chunks, y)
    adaptation.step(segment.grads)
    return (*scored, detach_hidden(segment.out.hidden))


def dynamic_evaluate(model, source, ms, settings, dtype="fp32", progress=False, cache=None, keep=None,
                     stop=lambda: False):
    """Scores of source (rows, batch) under dynamic evaluation from the model's current weights
    θ0, which it holds again on return. With a fresh cache.PointerCache, each segment is scored
    under the cache's mixture, its memory filled with the adapting model's outputs, while the
    update still descends the model's own loss.

    With a PassFile `keep`, the pass continues from the one saved there, if any, and is saved as it
    goes; when stop() turns true it is saved and None is returned (the model holds θ0 again)."""
    model.eval()
    hidden, workspace = model.init_hidden(source.size(1)), Workspace()
    nats, correct = zeros(source)
    starts = segments(source, settings.bptt)
    with adapting(model, ms, settings) as adaptation, model.lstm_kernel(DYNAMIC_LSTM_KERNEL):
        done = 0
        if keep and keep.saved:
            hidden, nats, correct, done = _continue(keep.saved, model, cache, source.device)
        bar = tqdm(starts[done:], desc="dynamic evaluation", unit="seg", disable=not progress, leave=False,
                   total=len(starts), initial=done, mininterval=0.5 if sys.stderr.isatty() else 60)
        for i in bar:
            x, y = get_batch(source, i, settings.bptt)
            n, c, hidden = _segment(model, adaptation, x, y, detach_hidden(hidden), dtype, workspace, cache)
            nats += n
            correct += c
            done += 1
            stopping = stop()
            if keep and done < len(starts) and (stopping or keep.due()):
                keep.save({"segment": done, "weights": {k: p.detach() for k, p in model.named_parameters()},
                           "hidden": hidden, "nats": nats, "correct": correct,
                           "cache": cache.state_dict() if cache is not None else None})
                if stopping:
                    bar.close()
                    return None
            faults.point("adapting")
    return Scores.of(nats, correct, source)


def run(model, source, settings, stats_source, dtype="fp32", *, stat_batches=None, stats_path=None,
        checkpoint=None, every_minutes=10.0, cache=None, progress=False):
    """Dynamic evaluation with what surrounds it, as evaluate.py runs it: the gradient statistics
    from stats_source (kept in the file stats_path, when given; see statistics), then the pass,
    kept in the file `checkpoint` when given (see PassFile): continued from it, saved every
    every_minutes and on Ctrl-C or SIGTERM. Returns (Scores, or None when the pass was stopped
    and kept; its settings and timings, for evaluate.py's JSON; the PassFile or None, to finish()
    once the result is safe)."""
    t0, keep = time.time(), None
    if checkpoint:
        keep = PassFile(checkpoint, every_minutes, pass_key(model, source, settings, dtype, cache, stats_source,
                                                            stat_batches))
    ms = statistics(model, stats_source, settings.bptt, stat_batches, dtype, progress=progress, path=stats_path)
    continued = keep.saved["segment"] if keep and keep.saved else None
    record = {**asdict(settings), "stat_batches": stat_batches, "stat_seconds": round(time.time() - t0, 2),
              "stats_file": stats_path, "continued_from_segment": continued}
    with cli.StopOnInterrupt("segment") if keep else nullcontext() as stop:
        scores = dynamic_evaluate(model, source, ms, settings, dtype, progress, cache, keep,
                                  stop=lambda: stop is not None and stop.requested)
    return scores, record, keep
