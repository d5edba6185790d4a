"""The arithmetic of one chunk of the decoder (lm/decoder.py), each step laid out the way it was
measured to run fastest (see docs/speed.md): the logits' matmul, the softmax's gradient with
its target entries kept exact in bf16, the features' and the weight's gradients, and the count
of correct predictions. Each computes the plain expression in its docstring."""
import torch

# Calls with at least this many rows in all read the decoder weight from a contiguous transposed
# copy, made once per call; fewer rows (the baseline's 20 x 35 batches, dynamic evaluation's
# 5-token segments) read a transposed view of it: chosen by measurement (docs/speed.md).
CONTIGUOUS_MIN_ROWS = 4096


def decoder_operands(weight, bias, dtype, rows):
    """(weight, its transpose, bias) in the matmul dtype, for a call of `rows` rows in all. For
    many rows the transpose is made contiguous: the logits' matmul reads a (d, vocab) matrix
    faster than the transposed view of a (vocab, d) one, by more than the copy costs once the
    rows are many; for fewer rows the copy costs more than it saves."""
    w = weight.to(dtype)
    return w, w.t().contiguous() if rows >= CONTIGUOUS_MIN_ROWS else w.t(), bias.to(dtype)


# Chunks of at most this many rows, fp32 on CPU (dynamic evaluation's 5-token segments), make
# their logits as (weight @ x.T).T and the features' gradient as a sum over blocks of
# BLOCK_ROWS vocabulary rows: MKL's sgemm reads a (vocab, d) weight much slower as the
# transposed operand of a few-row product, or along a long reduction, than as these do
# (measured; see docs/speed.md).
FEW_ROWS = 16
BLOCK_ROWS = 2048


def _few_rows(x, weight):
    return x.device.type == "cpu" and weight.dtype == torch.float32 and x.size(0) <= FEW_ROWS


def logits_(out, x, w, w_t, b):
    """out (rows, vocab) <- x @ w_t + b, the logits of x (rows, d); w_t is w.T or its contiguous copy."""
    if _few_rows(x, w):
        out.copy_(torch.addmm(b[:, None], w, x.t()).t())
    else:
        torch.addmm(b, x, w_t, out=out)


def features_gradient(grad_logits, w):
    """grad_logits (rows, vocab) @ w (vocab, d)."""
    if not _few_rows(grad_logits, w):
        return grad_logits @ w
    out = grad_logits.new_zeros(grad_logits.size(0), w.size(1))
    for start in range(0, w.size(0), BLOCK_ROWS):
        out.addmm_(grad_logits[:, start:start + BLOCK_ROWS], w[start:start + BLOCK_ROWS])
    return out


def softmax_minus_onehot_(probs, targets):
    """In place: logits (rows, vocab) -> softmax(logits) - onehot(targets), the gradient of the
    summed cross-entropy with respect to the logits; returns that summed cross-entropy (fp32).

    In bf16 every probability is one rounding away from its exact value, but p_t - 1 is not: a
    target probability of about 0.998 or more rounds to 1, and its gradient to 0. So the target
    entry is written as minus the sum of the other probabilities, accumulated in fp32, which is
    1 - p_t to bf16's relative precision however confident the model is; the loss takes
    -log p_t where p_t is small and -log1p(-(1 - p_t)) where it is close to 1."""
    torch.softmax(probs, dim=1, out=probs)
    rows = torch.arange(targets.size(0), device=targets.device)
    p_target = probs[rows, targets].float()
    probs[rows, targets] = 0
    # 1 - p_t, summed without p_t's rounding. The sum accumulates in fp32 even for bf16 input
    # and rounds only its result; asking for an fp32 result instead is several times slower.
    rest = probs.sum(1).float()
    probs[rows, targets] = rest.neg().to(probs.dtype)
    nats = torch.where(p_target > 0.5, rest.neg().log1p().neg(),
                       p_target.clamp_min(torch.finfo(torch.float32).tiny).log().neg())
    return nats.sum()


def weight_product(probs, x):
    """probs.T @ x, (vocab, d). On CPU in bf16 the matmul reads a transposed (rows, vocab) matrix
    much slower than it reads both operands as stored, so there it is (x.T @ probs).T, a
    transposed view that the caller reads once: in the cast to the weight's dtype, or in the sum
    it is added to."""
    if probs.device.type == "cpu" and probs.dtype == torch.bfloat16:
        return (x.t().contiguous() @ probs).t()
    return probs.t() @ x


def weight_gradient(probs, x, weight):
    """probs.T @ x (vocab, d) in the weight's dtype, in a new contiguous tensor (autograd would
    copy a transposed one into the weight's layout)."""
    return weight_product(probs, x).to(weight.dtype, memory_format=torch.contiguous_format)


def argmax_hits_(scores, targets):
    """How many rows of scores (rows, vocab) have their argmax at the target, with ties broken
    as torch.argmax breaks them (the first maximum wins); a float64 scalar.

    On CPU, argmax reads a row several times slower than amax does, so this takes two amax
    passes instead: a row is a hit when its target holds the maximum and, with the target set
    aside (-inf), nothing else reaches it. The few rows where something does (a tie) are decided
    by argmax on those rows alone. The targets' entries are put back before returning."""
    if scores.device.type != "cpu":
        return (scores.argmax(1) == targets).sum(dtype=torch.float64)
    rows = torch.arange(targets.size(0), device=targets.device)
    target = scores[rows, targets]
    best = scores.amax(1)
    scores[rows, targets] = float("-inf")
    others = scores.amax(1)
    scores[rows, targets] = target
    on_top = target == best
    tied = (on_top & (others == best)).nonzero().squeeze(1)
    hits = (on_top & (others < best)).sum(dtype=torch.float64)
    return hits + (scores[tied].argmax(1) == targets[tied]).sum(dtype=torch.float64)
