"""The plain scoring pass: a model's loss and next-token accuracy over a batchified split, window
after window with the recurrent state carried across, without gradients. Validation in train.py,
evaluate.py, tune.py and bench.py all score through it; the cache's pass (lm/cache.py) walks the
same windows. A Transformer, which has no state to carry, is scored by its sliding window instead
(sliding_evaluate), in validation and in evaluate.py alike."""
import math
import sys
from typing import NamedTuple

import torch
from tqdm import tqdm

from data import get_batch
from lm import cli, faults
from lm.decoder import Workspace
from lm.precision import autocast
from lm.transformer import sliding_window_scores


class Scores(NamedTuple):
    loss: float  # mean cross-entropy, nats per token
    accuracy: float  # fraction of tokens whose most likely prediction is right

    @property
    def bits(self):
        """Mean cross-entropy in bits per token (bits per character at char level)."""
        return self.loss / math.log(2)

    @property
    def ppl(self):
        return math.exp(self.loss)

    @classmethod
    def of(cls, nats, correct, source):
        """The Scores of summed nats and correct predictions (tensors) over the targets of a
        batchified source (rows, batch): one host sync."""
        tokens = (source.size(0) - 1) * source.size(1)
        return cls(nats.item() / tokens, correct.item() / tokens)


def score_batch(model, x, y, hidden, dtype, workspace=None):
    """One window without gradients: (summed nats, correct predictions, new hidden state)."""
    with autocast(x.device, dtype):
        return model.score(x, y, hidden, workspace)


EVAL_TOKENS = 20_000  # tokens per forward call of evaluation, whatever the batch size


def eval_window(batch_size):
    """Rows per forward call when evaluating at batch_size: long windows make the input
    projections and the decoder large matmuls (much faster than 70-token windows at batch 1; see
    docs/speed.md); they cannot change the result, only its float rounding."""
    return max(1, EVAL_TOKENS // batch_size)


def windows(source, window=None, progress=False):
    """(inputs, targets) of each window of `window` rows (default: eval_window) of a batchified
    source, with a progress bar; the fault point "validating" follows each window's use."""
    window = window or eval_window(source.size(1))
    for i in tqdm(range(0, source.size(0) - 1, window), desc="eval", disable=not progress, leave=False,
                  mininterval=0.5 if sys.stderr.isatty() else 60):
        yield get_batch(source, i, window)
        faults.point("validating")


def zeros(source, n=2):
    """n float64 zeros on source's device: the sums of a pass."""
    return [torch.zeros((), dtype=torch.float64, device=source.device) for _ in range(n)]


@torch.no_grad()
def evaluate(model, source, dtype="fp32", window=None, progress=False):
    """Scores of a model over a batchified source, shape (rows, batch).

    The recurrent state is carried from one window to the next, so every token after the first
    of a column is predicted with the whole column before it as context, and the window length
    (default: eval_window) changes only how many tokens each forward call takes. One host sync
    at the end."""
    model.eval()
    hidden, workspace = model.init_hidden(source.size(1)), Workspace()
    nats, correct = zeros(source)
    for x, y in windows(source, window, progress):
        n, c, hidden = score_batch(model, x, y, hidden, dtype, workspace)
        nats += n
        correct += c
    return Scores.of(nats, correct, source)


def default_stride(context):
    """The sliding window's stride unless given: half the context window, so that every token
    after the text's first window is predicted from at least half the window (three quarters on
    average) at twice the cost of non-overlapping windows."""
    return max(1, context // 2)


def sliding_evaluate(model, source, dtype="fp32", stride=None):
    """(Scores, transformer.SlidingScores) of a model without state (model.context_window set)
    over a split batchified at batch 1, source (rows, 1): windows of its full context sliding
    `stride` tokens (default: default_stride) at a time, every target scored once. Scores counts
    the rows - 1 targets, as evaluate counts the same source."""
    if source.size(1) != 1:
        raise ValueError(f"the sliding window scores one column, not a batch of {source.size(1)}")
    model.eval()
    with autocast(source.device, dtype):
        scored = sliding_window_scores(model, source[:, 0], stride or default_stride(model.context_window))
    n = scored.nats.numel()
    return Scores(scored.nats.sum().item() / n, scored.correct.item() / n), scored


def refuse_for_stateless(model, what):
    """A one-line error when `what` (a flag) asks a model without state (the Transformer) for the
    cache or dynamic evaluation: both continue a recurrent model's state across the split."""
    if model.context_window is not None:
        raise cli.UserError(f"{what} does not apply to a Transformer: the cache and dynamic evaluation continue a "
                            "recurrent model's state across the split, and a Transformer has none (it is scored by a "
                            "sliding window)")
