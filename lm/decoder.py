"""The decoder, softmax(features @ weight.T + bias), and what is made of it, a chunk of tokens at a
time so that the (tokens, vocab) logits never exist whole.

- linear_cross_entropy: the mean cross-entropy and its gradients (training).
- low_rank_cross_entropy: the same in one chunk, with the chunk's log-probabilities kept and the
  weight's gradient left in its parts (LowRankGradient): what dynamic evaluation needs.
- linear_scores: the summed nats and correct predictions (plain evaluation).
- log_prob_chunks: the fp32 log-probabilities chunk by chunk, for a caller that scores them its
  own way (the cache).
- tied_embedding / TiedGradient: the embedding lookup of a weight the decoder shares, whose
  gradient is added in place into the decoder's instead of being a second dense gradient.

Each computes the same function as the plain PyTorch code it replaces: tests/test_decoder.py
pins that exactly in fp32 and within tolerance in bf16.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lm.logits import (
    argmax_hits_,
    decoder_operands,
    features_gradient,
    logits_,
    softmax_minus_onehot_,
    weight_gradient,
    weight_product,
)
from lm.precision import compute_dtype

# Tokens whose logits are made at a time. Training takes a whole AWD-LSTM batch (80 x up to 90
# steps) in one chunk: larger matmuls, and one fp32 update of the decoder's gradient instead of
# one per chunk. Scoring keeps an fp32 copy of each chunk for its log-softmax, so it uses less.
LOSS_ROWS = 8192
SCORE_ROWS = 2048


class Workspace:
    """Scratch (rows, vocab) matrices for the functions here, one per name and dtype, reused by
    every chunk and, when the caller keeps the Workspace, by every call: on CPU a fresh buffer
    this large is page-faulted in on each allocation, which costs as much as a pass over it."""

    def __init__(self):
        self.flat = {}

    def matrix(self, rows, cols, dtype, device, name="logits"):
        flat = self.flat.get((name, dtype))
        if flat is None or flat.numel() < rows * cols or flat.device != device:
            flat = self.flat[name, dtype] = torch.empty(rows * cols, dtype=dtype, device=device)
        return flat[:rows * cols].view(rows, cols)


class LowRankGradient:
    """The gradient of a (vocab, d) decoder weight, left in its parts: left.T @ right, with left
    (k, vocab) the loss's gradient with respect to the k tokens' logits and right (k, d) their
    features, plus, when the embedding lookup shares the weight, the lookup's gradient rows
    (m, d) added at the rows `ids` (m,). For dynamic evaluation's 5 tokens the parts are a
    thousandth of the dense gradient: an update that forms each entry of left.T @ right as it
    reads the weight never writes or reads the (vocab, d) matrix."""

    def __init__(self, left, right):
        self.left, self.right = left, right
        self.ids = self.rows = None

    def add_rows(self, ids, rows):
        self.ids, self.rows = ids, rows

    def dense(self, out):
        """The gradient whole, written into out (vocab, d) in the weight's dtype."""
        if self.left.dtype == out.dtype:
            torch.mm(self.left.t(), self.right, out=out)
        else:
            out.copy_(self.left.t() @ self.right)
        if self.ids is not None:
            out.index_add_(0, self.ids, self.rows.to(out.dtype))
        return out


def _chunks(features, targets, rows):
    """(start, features rows, their targets) for each block of `rows` tokens."""
    for start in range(0, features.size(0), rows):
        yield start, features[start:start + rows], targets[start:start + rows]


def _log_softmax_(logits, log_probs):
    """log_probs (rows, vocab) fp32 <- log_softmax(logits): logits itself when they are fp32 and
    may be overwritten, else a buffer of their shape."""
    if log_probs is not logits:
        log_probs.copy_(logits)
    return torch.log_softmax(log_probs, dim=1, out=log_probs)


class _Plan(NamedTuple):
    """How _LinearCrossEntropy runs: tokens per chunk, its scratch memory, the pass's TiedGradient
    (or None), and low_rank: one chunk, its fp32 log-probabilities kept, and the weight's gradient
    left in its parts."""
    rows: int
    workspace: Workspace
    tied: object
    low_rank: bool


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss *and* its gradients, one chunk of rows at a time; backward
    only scales them by the incoming gradient. The (tokens, vocab) logits, their softmax and
    its gradient never exist whole, which saves most of the memory traffic of the softmax.
    Returns (mean loss, None), or with plan.low_rank (mean loss, (log_probs, LowRankGradient)).
    With a TiedGradient that an embedding lookup of the weight has joined, the weight's gradient
    goes to it."""

    @staticmethod
    def forward(ctx, features, weight, bias, targets, plan):
        device = features.device
        dtype = compute_dtype(device.type, features.dtype)  # of the matmul operands
        n, vocab = features.size(0), weight.size(0)
        rows = n if plan.low_rank else min(plan.rows, n)  # low rank: one chunk, whose softmax gradient is `left`
        grad_features = torch.empty_like(features)
        grad_weight = grad_bias = None  # fp32 sums over chunks, in the weight's dtype
        loss = torch.zeros((), dtype=torch.float32, device=device)
        probs_all = plan.workspace.matrix(rows, vocab, dtype, device)
        log_probs = plan.workspace.matrix(n, vocab, torch.float32, device, "log_probs") if plan.low_rank else None
        # The mean's 1/n goes on the softmax's gradient when that is the smaller (a few rows, as in
        # dynamic evaluation), else on the summed gradients.
        scale_probs = plan.low_rank or rows < weight.size(1)
        with torch.autocast(device.type, enabled=False):
            w, w_t, b = decoder_operands(weight, bias, dtype, n)
            for start, x, t in _chunks(features.to(dtype), targets, rows):
                probs = probs_all[:x.size(0)]
                logits_(probs, x, w, w_t, b)
                if plan.low_rank:
                    _log_softmax_(probs, log_probs)
                loss += softmax_minus_onehot_(probs, t)  # probs is now d loss / d logits
                if scale_probs:
                    probs.div_(n)
                grad_features[start:start + x.size(0)] = features_gradient(probs, w)
                if plan.low_rank:
                    grad_weight, grad_bias = LowRankGradient(probs, x.detach()), probs.sum(0).to(bias.dtype)
                elif grad_weight is None:
                    grad_weight, grad_bias = weight_gradient(probs, x, weight), probs.sum(0).to(bias.dtype)
                else:
                    grad_weight.add_(weight_product(probs, x))
                    grad_bias.add_(probs.sum(0))
        ctx.grads = (grad_features, grad_weight, grad_bias)
        if not scale_probs:
            torch._foreach_div_(ctx.grads, n)
        ctx.tied = plan.tied
        return loss / n, (log_probs, grad_weight) if plan.low_rank else None

    @staticmethod
    def backward(ctx, grad_loss, _):
        grads = list(ctx.grads)
        del ctx.grads  # differentiable once
        low_rank = grads[1] if isinstance(grads[1], LowRankGradient) else None
        if grad_loss.device.type != "cpu" or grad_loss.item() != 1:  # on CPU, skip a pass when it is 1
            torch._foreach_mul_([g for g in grads if torch.is_tensor(g)], grad_loss)
            if low_rank is not None:
                low_rank.left.mul_(grad_loss)
        if ctx.tied is not None and ctx.tied.lookup:
            ctx.tied.grad, grads[1] = grads[1], None
        if low_rank is not None:  # autograd gets none: the caller holds it (low_rank_cross_entropy)
            grads[1] = None
        return *grads, None, None


def linear_cross_entropy(features, weight, bias, targets, *, rows=LOSS_ROWS, workspace=None, tied=None):
    """Mean cross-entropy of softmax(features @ weight.T + bias) against targets, the same value
    and gradients as F.cross_entropy(F.linear(...)) but computed `rows` tokens at a time.

    features (tokens, d) with tokens >= 1; weight (vocab, d) and bias (vocab,) fp32, receiving
    fp32 gradients; targets (tokens,). Under bf16 autocast the matmul operands (features, weight,
    logits and their gradient) are bf16, while the loss, the target entries' gradients (see
    softmax_minus_onehot_) and the sums over chunks are fp32. Differentiable once (no double
    backward). Pass a Workspace kept across calls to reuse its scratch memory.
    tied: the TiedGradient of this pass when weight is also an embedding (see tied_embedding).
    """
    workspace = Workspace() if workspace is None else workspace
    loss, _ = _LinearCrossEntropy.apply(features, weight, bias, targets, _Plan(rows, workspace, tied, False))
    return loss


class LowRankLoss(NamedTuple):
    """low_rank_cross_entropy's results."""
    loss: torch.Tensor  # the mean cross-entropy, differentiable but for the weight
    log_probs: torch.Tensor  # (tokens, vocab) fp32 log-softmax of the logits, in workspace memory
    weight_grad: LowRankGradient  # d loss / d weight, complete once loss's backward has run


def low_rank_cross_entropy(features, weight, bias, targets, *, workspace=None, tied=None):
    """linear_cross_entropy's loss in one chunk, for a few tokens (dynamic evaluation's segments),
    with the chunk's log-probabilities kept for scoring them, and the weight's gradient returned
    as weight_grad, a LowRankGradient whose parts are scaled by loss's backward like the other
    gradients (and, with a tied lookup, given its rows), instead of going to autograd, which
    sees no gradient for weight (torch.autograd.grad(..., allow_unused=True) gives None for it).
    log_probs and the gradient's parts live in the workspace: use them before its next call."""
    workspace = Workspace() if workspace is None else workspace
    loss, (log_probs, weight_grad) = _LinearCrossEntropy.apply(features, weight, bias, targets,
                                                               _Plan(features.size(0), workspace, tied, True))
    return LowRankLoss(loss, log_probs, weight_grad)


def log_prob_chunks(features, weight, bias, *, rows=SCORE_ROWS, workspace=None):
    """The decoder's fp32 log-probabilities of features (tokens, d), as (start, log_probs) for each
    chunk of `rows` tokens from token `start` on, log_probs (rows, vocab), without gradients. The
    logits are made in the compute dtype of the call (bf16 under autocast); each chunk lives in
    workspace memory that the next one reuses, and the caller may overwrite it."""
    dtype = compute_dtype(features.device.type, features.dtype)
    with torch.no_grad():
        operands = decoder_operands(weight, bias, dtype, features.size(0))
        features = features.to(dtype)
    return _log_prob_chunks(features, operands, rows, Workspace() if workspace is None else workspace)


@torch.no_grad()
def _log_prob_chunks(features, operands, rows, workspace):
    shape, device = (min(rows, features.size(0)), operands[0].size(0)), features.device
    logits = workspace.matrix(*shape, features.dtype, device)
    log_probs = logits if features.dtype == torch.float32 else workspace.matrix(*shape, torch.float32, device)
    for start in range(0, features.size(0), rows):
        x = features[start:start + rows]
        with torch.autocast(device.type, enabled=False):
            logits_(logits[:x.size(0)], x, *operands)
            chunk = _log_softmax_(logits[:x.size(0)], log_probs[:x.size(0)])
        yield start, chunk


def model_scores(log_probs, targets):
    """(summed target log-likelihood (fp32), correct argmax predictions (float64)) of a chunk's
    fp32 log-probabilities (rows, vocab): how every score here counts the model alone."""
    return log_probs.gather(1, targets[:, None]).sum(), argmax_hits_(log_probs, targets)


def log_prob_scores(chunks, targets):
    """(summed nats, correct predictions), float64 scalars on the device, of (start, log_probs)
    chunks such as log_prob_chunks gives, against targets (tokens,): model_scores summed."""
    nats, correct = (torch.zeros((), dtype=torch.float64, device=targets.device) for _ in range(2))
    for start, log_probs in chunks:
        log_likelihood, hits = model_scores(log_probs, targets[start:start + log_probs.size(0)])
        nats -= log_likelihood
        correct += hits
    return nats, correct


@torch.no_grad()
def linear_scores(features, weight, bias, targets, *, rows=SCORE_ROWS, workspace=None):
    """(summed cross-entropy in nats, number of correct argmax predictions) of the decoder over
    features (tokens, d) against targets (tokens,), as float64 scalars on the device. The logits
    are made in the compute dtype (bf16 under autocast) and the log-softmax is taken in fp32."""
    chunks = log_prob_chunks(features, weight, bias, rows=rows, workspace=workspace)
    with torch.autocast(features.device.type, enabled=False):
        return log_prob_scores(chunks, targets)


class TiedGradient:
    """One forward and backward pass's hand-over of the gradient of a weight that the embedding
    and the decoder share. The decoder's backward runs first (the lookup feeds it) and leaves its
    dense (vocab, d) gradient here instead of returning it; the lookup's backward adds its rows
    into it in place and returns the sum as the weight's only gradient. Without this, autograd
    adds a second (vocab, d) gradient, the lookup's, into the decoder's: a buffer filled, written
    and added on every backward, most of all of dynamic evaluation's 5-token steps. If no lookup
    joins (lookup stays False), the decoder returns its gradient as usual. A LowRankGradient
    handed over here gets the lookup's rows added to its parts, and neither returns a gradient."""

    def __init__(self):
        self.lookup = False
        self.grad = None


class _TiedEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens, weight, tied):
        tied.lookup = True
        ctx.save_for_backward(tokens)
        ctx.tied, ctx.weight_shape = tied, weight.shape
        return F.embedding(tokens, weight)

    @staticmethod
    def backward(ctx, grad_out):
        tokens, = ctx.saved_tensors
        grad, ctx.tied.grad = ctx.tied.grad, None
        if isinstance(grad, LowRankGradient):  # the weight's gradient stays in parts: add ours to them
            grad.add_rows(tokens.reshape(-1), grad_out.reshape(-1, grad.right.size(1)))
            return None, None, None
        if grad is None:  # the decoder was not in this backward pass
            grad = grad_out.new_zeros(ctx.weight_shape)
        grad.index_add_(0, tokens.reshape(-1), grad_out.reshape(-1, grad.size(1)).to(grad.dtype))
        return None, grad, None


def tied_embedding(tokens, weight, tied):
    """weight[tokens], (*tokens.shape, d), whose gradient joins the decoder's through the
    TiedGradient `tied` of this pass (pass the same one to linear_cross_entropy)."""
    return _TiedEmbedding.apply(tokens, weight, tied)
