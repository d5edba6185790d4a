"""The continuous cache pointer (Grave, Joulin and Usunier 2017, "Improving Neural Language
Models with a Continuous Cache"), which AWD-LSTM adds at evaluation time (Merity et al. 2017,
"Pointer models").

For the token at position t of a column, with h_t the model's raw (undropped) last-layer output:

    p_cache(w) = sum_i softmax_i(theta * h_i . h_t) [w_{i+1} = w]     over i in [t - window, t)
    p(w)       = lam * p_cache(w) + (1 - lam) * p_model(w)

The memory holds the previous `window` outputs h_i of the column, each paired with the word
that followed it; position t never sees its own output or its own target. Where the memory is
empty (the first token of a split) p is p_model alone.

The original code's pointer.py keeps a window x vocabulary one-hot matrix and loops over tokens
in Python. Here the attention of a chunk of positions over its keys is one batched matmul, the
target's cache probability is a sum over the keys whose next word matches, and the accuracy's
mixture is a scatter-add of the attention weights into the chunk's (rows, vocab) probabilities:
no window x vocabulary matrix is ever built.

Where the original differs: it uses no cache for the first `window` targets of a split, nor for
the first target of each of its evaluation chunks (--bptt 2000 on WikiText-2), because it keeps
only `window` outputs between chunks and starts using them one step late. original_gaps=CHUNK
reproduces that for comparison; by default every position with a non-empty memory uses it.
"""
import math
from dataclasses import dataclass

import torch

from data import corpus_name
from lm.cli import UserError
from lm.decoder import SCORE_ROWS, Workspace, model_scores
from lm.precision import autocast
from lm.scoring import Scores, windows, zeros


@dataclass(frozen=True)
class CacheSettings:
    window: int  # previous positions attended to
    theta: float  # sharpness of the attention
    lam: float  # weight of the cache in the mixture
    chunk: int = None  # the original pointer.py's evaluation chunk (its --bptt), for original_gaps


# The original AWD-LSTM README's pointer.py commands.
CACHE_DEFAULTS = {
    "wikitext-2": CacheSettings(window=3785, theta=0.662, lam=0.1279, chunk=2000),
    "ptb": CacheSettings(window=500, theta=1.0, lam=0.1, chunk=5000),
}


def check_settings(window, theta, lam):
    """Refuse settings that cannot run."""
    if window < 1:
        raise UserError(f"--cache-window must be at least 1, got {window}")
    if not theta > 0:
        raise UserError(f"--cache-theta must be positive, got {theta}")
    if not 0 <= lam <= 1:
        raise UserError(f"--cache-lambda must be in [0, 1], got {lam}")


class PointerCache:
    """The memory of each column's last `window` raw outputs and the words that followed them,
    carried from one evaluation window to the next like the recurrent state.

    It also counts the model alone, from the same log-probabilities and as a pass without the
    cache counts it (decoder.model_scores), so that one pass gives both numbers: model_nats and
    model_correct, float64 sums on the device over the positions scored so far."""

    def __init__(self, window, theta, lam, original_gaps=None):
        self.window, self.theta, self.lam, self.gaps = window, theta, lam, original_gaps
        self.keys = None  # (M, batch, d) fp32, M <= window: the latest outputs, oldest first
        self.words = None  # (M, batch): the word that followed each of them
        self.seen = 0  # positions of each column already scored
        self.model_nats = self.model_correct = None

    def settings(self):
        """What the cache was asked for, as evaluate.py's JSON records it."""
        return {"window": self.window, "theta": self.theta, "lambda": self.lam, "original_gaps": self.gaps}

    def state_dict(self):
        """The memory and the model-alone sums, for a pass that is saved and continued later."""
        return {"keys": self.keys, "words": self.words, "seen": self.seen, "model_nats": self.model_nats,
                "model_correct": self.model_correct}

    def load_state_dict(self, state):
        self.keys, self.words, self.seen = state["keys"], state["words"], state["seen"]
        self.model_nats, self.model_correct = state["model_nats"], state["model_correct"]

    @staticmethod
    def rows(batch):
        """Rows per chunk of log-probabilities for score(): whole time steps of `batch` columns."""
        return max(1, SCORE_ROWS // batch) * batch

    @torch.no_grad()
    def score(self, raw, chunks, targets):
        """(summed nats, correct predictions), float64, of one evaluation window under the
        mixture: raw (T, batch, d) the model's raw outputs, targets (T, batch), and chunks the
        model's fp32 log-probabilities of the window's positions flattened time-major, as
        (start, log_probs (rows, vocab)) with whole time steps in each (LanguageModel.log_probs
        with rows() rows), which it overwrites. The window then joins the memory."""
        batch, flat = raw.size(1), targets.reshape(-1)
        raw = raw.detach().float()
        keys = raw if self.keys is None else torch.cat([self.keys, raw])
        words = targets if self.words is None else torch.cat([self.words, targets])
        first, seen = keys.size(0) - raw.size(0), self.seen  # where the window starts, in keys and in the split
        if self.model_nats is None:
            self.model_nats, self.model_correct = zeros(raw)
        nats, correct = zeros(raw)
        with torch.autocast(raw.device.type, enabled=False):
            for start, log_probs in chunks:
                t = flat[start:start + log_probs.size(0)]
                log_likelihood, hits = model_scores(log_probs, t)  # before the mixture overwrites log_probs
                self.model_nats -= log_likelihood
                self.model_correct += hits
                s, e = start // batch, (start + t.numel()) // batch
                weights, lam, key_words = self.attend(raw[s:e], keys, words, first + s, seen + s)
                log_likelihood, hits = mixture_scores(log_probs.view(e - s, batch, -1), t.view(e - s, batch), weights,
                                                      lam, key_words)
                nats -= log_likelihood
                correct += hits
        self.keys, self.words = keys[-self.window:].clone(), words[-self.window:].clone()
        self.seen += raw.size(0)
        return nats, correct

    def attend(self, queries, keys, words, q0, g0):
        """Attention of queries (n, batch, d), the outputs at rows q0.. of keys (L, batch, d) and
        split positions g0.., over the previous `window` rows of keys. Returns the weights
        (n, batch, K), each row's cache weight lam (n, 1) (0 where its memory is empty) and the
        keys' next words (batch, K), for the K keys from lo = max(0, q0 - window) on."""
        n = queries.size(0)
        lo, hi = max(0, q0 - self.window), q0 + n - 1  # the keys any of these queries may see
        if hi <= lo:  # only the split's first position, with an empty memory
            empty = queries.new_zeros(n, queries.size(1), 0)
            return empty, queries.new_zeros(n, 1), words[:0].T
        scores = self.theta * torch.bmm(queries.transpose(0, 1), keys[lo:hi].permute(1, 2, 0))  # (batch, n, K)
        q = torch.arange(q0, q0 + n, device=keys.device)[:, None]
        k = torch.arange(lo, hi, device=keys.device)[None, :]
        visible = (k < q) & (k >= q - self.window)  # (n, K), the same band in every column
        if self.gaps:
            g = torch.arange(g0, g0 + n, device=keys.device)[:, None]
            visible &= (g > self.window) & (g % self.gaps != 0)
        scores.masked_fill_(~visible, -math.inf)
        weights = torch.softmax(scores, dim=-1).nan_to_num_(0.0).transpose(0, 1)  # rows with no key: 0
        lam = torch.where(visible.any(1, keepdim=True), self.lam, 0.0).to(weights.dtype)
        return weights, lam, words[lo:hi].T


def mixture_scores(log_probs, targets, weights, lam, key_words):
    """(summed log-probability of the targets, correct argmax predictions) under
    lam * p_cache + (1 - lam) * p_model.

    log_probs (n, batch, vocab) fp32 model log-probabilities, overwritten; targets (n, batch);
    weights (n, batch, K) attention over keys whose next words are key_words (batch, K); lam
    (n, 1) per position. The target's log-probability is mixed in log space, so that lam = 0
    gives the model's own log-probability bit for bit."""
    model_lp = log_probs.gather(2, targets[..., None]).squeeze(2)
    mixed = mix(model_lp, cache_probability(targets, weights, key_words), lam)
    probs = log_probs.exp_().mul_((1 - lam)[..., None])
    probs.scatter_add_(2, key_words[None].expand_as(weights), weights * lam[..., None])
    correct = (probs.argmax(2) == targets).sum(dtype=torch.float64)
    return mixed.sum(), correct


def cache_probability(targets, weights, key_words):
    """p_cache of each target (n, batch): the attention on the keys whose next word it is."""
    return (weights * (key_words[None] == targets[..., None])).sum(-1)


def mix(model_lp, p_cache, lam):
    """log(lam * p_cache + (1 - lam) * exp(model_lp)), exactly model_lp where lam = 0."""
    return torch.logaddexp(model_lp + torch.log1p(-lam), torch.log(lam) + torch.log(p_cache))


@torch.no_grad()
def cache_evaluate(model, source, cache, dtype="fp32", window=None, progress=False):
    """Scores of a model over a batchified source (rows, batch) under the mixture of a fresh
    PointerCache: scoring.evaluate's pass, whose windows' log-probabilities the cache scores. The
    cache's model_nats and model_correct are then those of scoring.evaluate, bit for bit."""
    model.eval()
    hidden, workspace = model.init_hidden(source.size(1)), Workspace()
    nats, correct = zeros(source)
    for x, y in windows(source, window, progress):
        with autocast(x.device, dtype):
            out = model.features(x, hidden)
            chunks = model.log_probs(out, rows=cache.rows(source.size(1)), workspace=workspace)
        n, c = cache.score(out.raw, chunks, y)
        nats += n
        correct += c
        hidden = out.hidden
    return Scores.of(nats, correct, source)


def make_cache(data, window=None, theta=None, lam=None, original_gaps=False):
    """The PointerCache of evaluate.py's flags for the corpus `data` (a hub name or folder);
    settings not given come from the corpus's entry in CACHE_DEFAULTS."""
    known = CACHE_DEFAULTS.get(corpus_name(data))
    given = (window, theta, lam)
    if known is None and None in given:
        raise UserError(f"no cache defaults for {data} (known: {', '.join(CACHE_DEFAULTS)}); give "
                        "--cache-window, --cache-theta and --cache-lambda")
    defaults = (known.window, known.theta, known.lam) if known else given
    window, theta, lam = (v if v is not None else d for v, d in zip(given, defaults, strict=True))
    check_settings(window, theta, lam)
    if original_gaps and (known is None or known.chunk is None):
        raise UserError(f"--cache-original-gaps needs the original evaluation chunk, known for "
                        f"{', '.join(CACHE_DEFAULTS)} only")
    return PointerCache(window, theta, lam, known.chunk if original_gaps else None)
