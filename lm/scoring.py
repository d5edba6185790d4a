"""The plain scoring pass: a model's loss and next-token accuracy over a batchified split, window
after window with the recurrent state carried across, without gradients. Validation in train.py,
evaluate.py, tune.py and bench.py all score through it; the cache's pass (lm/cache.py) walks the
same windows."""
import math
import sys
from typing import NamedTuple

import torch
from tqdm import tqdm

from data import get_batch
from lm import faults
from lm.decoder import Workspace
from lm.precision import autocast


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
