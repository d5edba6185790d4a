"""Speed machinery, apart from the models: mixed precision, our own LSTM recurrence and the
chunked decoder loss and scores.

- autocast / bf16_is_fast / default_dtype / check_dtype / compute_dtype: bf16 or fp16 autocast
  with fp32 master weights, where the hardware runs it natively.
- keep_freed_memory: glibc's malloc told to reuse large freed blocks instead of mapping them anew.
- lstm_sequence: one LSTM layer with a hand-written backward (bf16 training on CPU, where
  oneDNN's LSTM backward is slow); fused_lstm: the same layer in torch.lstm (oneDNN, cuDNN).
- linear_cross_entropy / linear_scores: the decoder, softmax and loss (or scores) a chunk of
  tokens at a time, so the (tokens, vocab) logits never exist whole.
- tied_embedding / TiedGradient: the embedding lookup of a weight the decoder shares, whose
  gradient is added in place into the decoder's instead of being a second dense gradient.
- LowRankGradient: the decoder weight's gradient of a few tokens left in its parts, for a
  caller that folds it into its own update (dynamic evaluation) instead of reading it whole.

Each computes the same function as the plain PyTorch code it replaces: tests/test_kernels.py
pins that exactly in fp32 and within tolerance in bf16.
"""
import ctypes

import torch
import torch.nn.functional as F

from lm.cli import UserError

DTYPES = ("fp32", "bf16", "fp16")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast's compute dtype of each mixed precision


def autocast(device, dtype):
    """Mixed precision for dtype "bf16" or "fp16": matmuls and the LSTM kernels run in that
    dtype while the weights, their gradients and the optimizer stay fp32 ("master weights").
    fp16 training also needs loss scaling (optim.LossScaler). "fp32" is a no-op."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=HALF.get(dtype, torch.bfloat16), enabled=dtype != "fp32")


def bf16_is_fast(device):
    """True where bfloat16 matmuls run natively: CUDA GPUs of compute capability 8.0 or more
    (torch.cuda.is_bf16_supported() also says True where bf16 is only emulated, e.g. on a T4), and
    CPUs with AVX512-BF16 or AMX (on other CPUs oneDNN has no bf16 LSTM; see check_dtype)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def default_dtype(device):
    """bf16 where the device runs it natively, fp16 with loss scaling on the other CUDA GPUs
    (T4, V100), fp32 elsewhere (CPUs without bf16, and MPS and other accelerators)."""
    if bf16_is_fast(device):
        return "bf16"
    return "fp16" if torch.device(device).type == "cuda" else "fp32"


def check_dtype(device, dtype, unscaled_backward=False, flag="--dtype"):
    """Refuse `dtype` where it cannot run on `device`. On a CPU without AVX512-BF16 or AMX, oneDNN
    cannot make its bf16 LSTM primitive at all, nor an fp16 one on CPUs like ours; mixed precision
    on other accelerators (MPS, XPU) has not been verified. unscaled_backward: the caller takes
    gradients without loss scaling (dynamic evaluation), where fp16's small gradients would flush
    to zero."""
    if dtype == "fp32":
        return
    kind = torch.device(device).type
    reason = None
    if dtype == "bf16" and kind == "cpu" and not bf16_is_fast(device):
        reason = "bf16 needs a CPU with AVX512-BF16 or AMX, and this one has neither; use fp32"
    elif dtype == "fp16" and kind != "cuda":
        reason = "fp16 (with loss scaling) is for CUDA GPUs without native bf16; on this device use fp32"
    elif kind not in ("cpu", "cuda"):
        reason = f"mixed precision on {kind} has not been verified by this project; use fp32"
    elif dtype == "fp16" and unscaled_backward:
        reason = "this takes gradients without loss scaling, which fp16 would flush to zero; use fp32 or bf16"
    if reason:
        raise UserError(f"{flag} {dtype}: {reason}")


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def glibc_mallopt():
    """glibc's mallopt(parameter, value), or None where the C library is not glibc."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse: no mmap for large blocks and no trimming
    of the heap. By default every block above 32 MB (the bf16 copy of a large decoder weight, its
    fresh fp32 gradient) is a new mapping, page-faulted in again on every training step; kept, it
    is reused as it is. The process then holds on to its peak memory, which training reaches on
    every step anyway. Returns whether it applied: False where the C library is not glibc."""
    mallopt = glibc_mallopt()
    return mallopt is not None and mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1


def compute_dtype(device_type, default):
    """The dtype that autocast gives matmuls on this device type, or `default` outside autocast."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else default


def _times_transposed(weight, rows):
    """x -> x @ weight.T for x of `rows` rows, called once per time step. On CPU in bf16 the
    weight is packed once into oneDNN's blocked layout, where a plain mm would re-pack it on
    every call. weight may be a transposed view: neither path copies it first."""
    if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return lambda x: x @ weight.t()


class _LSTMSequence(torch.autograd.Function):
    """One LSTM layer over a whole sequence, with a hand-written backward.

    Forward runs the recurrence a time step at a time; backward walks it in reverse and leaves
    everything that does not depend on the recurrence to three large matmuls at the end. Gate
    order is PyTorch's (i, f, g, o). Saved for backward: the activated gates (T, B, 4H) in the
    compute dtype, the cell states (T+1, B, H) and their tanh (T, B, H) in fp32 (fp64 for fp64
    inputs), and the outputs with h0 in front (T+1, B, H). The cell state and the gradients of
    the backward walk are carried in fp32 whatever the compute dtype; only what feeds a matmul
    is cast to it.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias):
        """x (T, B, I), w_ih (4H, I), w_hh (4H, H) and bias (4H,) in the compute dtype;
        h0, c0 (B, H). Returns the outputs (T, B, H) in the compute dtype, h_T and c_T in the
        cell dtype."""
        steps, batch, _ = x.shape
        hid = w_hh.size(1)
        gates = torch.addmm(bias, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, 4 * hid)
        cells = x.new_empty((steps + 1, batch, hid), dtype=torch.promote_types(x.dtype, torch.float32))
        cells[0] = c0
        tanh_cells = torch.empty_like(cells[1:])
        outs = x.new_empty((steps + 1, batch, hid))  # outs[0] is h0, outs[t + 1] is h_t
        outs[0] = h0
        recurrent = _times_transposed(w_hh, batch)
        for t in range(steps):
            gate = gates[t].add_(recurrent(outs[t]))  # pre-activations, then activated in place
            gate[:, :2 * hid].sigmoid_()
            gate[:, 2 * hid:3 * hid].tanh_()
            gate[:, 3 * hid:].sigmoid_()
            i, f, g, o = gate.split(hid, 1)
            torch.mul(f, cells[t], out=cells[t + 1]).addcmul_(i, g)  # c_t = f c_{t-1} + i g
            torch.tanh(cells[t + 1], out=tanh_cells[t])
            torch.mul(o, tanh_cells[t], out=outs[t + 1])  # h_t = o tanh(c_t)
        ctx.save_for_backward(x, w_ih, w_hh, gates, cells, tanh_cells, outs)
        return outs[1:], outs[steps].to(cells.dtype), cells[steps].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        x, w_ih, w_hh, gates, cells, tanh_cells, outs = ctx.saved_tensors
        steps, batch, hid = tanh_cells.shape
        f32 = {"dtype": cells.dtype, "device": x.device}  # fp32, or fp64 for gradcheck
        dh = torch.zeros(batch, hid, **f32) if grad_h is None else grad_h.to(cells.dtype, copy=True)
        dc = torch.zeros(batch, hid, **f32) if grad_c is None else grad_c.to(cells.dtype, copy=True)
        d_gates = torch.empty_like(gates)  # d loss / d pre-activations, (T, B, 4H)
        d_bias = torch.zeros(batch, 4 * hid, **f32)
        # Per-step scratch in fp32: the step's gates, their gradients, tanh(c_t) and a temporary.
        gate, d_gate = torch.empty(batch, 4 * hid, **f32), torch.empty(batch, 4 * hid, **f32)
        tanh_c, tmp = torch.empty(batch, hid, **f32), torch.empty(batch, hid, **f32)
        one = torch.ones((), **f32)
        i, f, g, o = gate.split(hid, 1)
        di, df, dg, do = d_gate.split(hid, 1)
        recurrent = _times_transposed(w_hh.t(), batch)  # dh_{t-1} = d_gates_t @ w_hh
        for t in reversed(range(steps)):
            gate.copy_(gates[t])
            tanh_c.copy_(tanh_cells[t])
            if grad_out is not None:
                dh.add_(grad_out[t])  # from the layer above, plus dh from step t + 1
            torch.sub(1, o, out=do).mul_(o).mul_(tanh_c).mul_(dh)  # dh tanh(c) o (1 - o)
            torch.addcmul(one, tanh_c, tanh_c, value=-1, out=tmp).mul_(o)
            dc.addcmul_(dh, tmp)  # dc_t += dh o (1 - tanh(c)^2)
            torch.sub(1, i, out=di).mul_(i).mul_(g).mul_(dc)  # dc g i (1 - i)
            torch.sub(1, f, out=df).mul_(f).mul_(cells[t]).mul_(dc)  # dc c_{t-1} f (1 - f)
            torch.addcmul(one, g, g, value=-1, out=dg).mul_(i).mul_(dc)  # dc i (1 - g^2)
            dc.mul_(f)  # -> dc_{t-1}
            d_bias.add_(d_gate)
            d_gates[t] = d_gate
            dh.copy_(recurrent(d_gates[t]))  # -> dh_{t-1}
        flat = d_gates.view(steps * batch, 4 * hid)
        need = ctx.needs_input_grad
        dx = (flat @ w_ih).view(steps, batch, -1) if need[0] else None
        dw_ih = flat.t() @ x.reshape(steps * batch, -1) if need[3] else None
        dw_hh = flat.t() @ outs[:-1].reshape(steps * batch, hid) if need[4] else None
        return dx, dh, dc, dw_ih, dw_hh, d_bias.sum(0)


def lstm_sequence(x, state, w_ih, w_hh, b_ih, b_hh):
    """LSTM layer over x (T, B, I) from state (h0, c0), each (1, B, H), in x's dtype or in the
    autocast dtype of x's device; the same function as torch.lstm with these weights. Returns
    (outputs (T, B, H), (h_T, c_T) each (1, B, H), at least fp32)."""
    device = x.device.type
    dtype = compute_dtype(device, x.dtype)
    h0, c0 = state
    with torch.autocast(device, enabled=False):
        out, h, c = _LSTMSequence.apply(x.to(dtype), h0[0], c0[0], w_ih.to(dtype), w_hh.to(dtype),
                                        (b_ih + b_hh).to(dtype))
    return out, (h[None], c[None])


def fused_lstm(x, state, w_ih, w_hh, b_ih, b_hh, train=True):
    """The same layer in PyTorch's fused kernel (torch.lstm: oneDNN on CPU, cuDNN on CUDA), with
    lstm_sequence's arguments and results. train=False lets cuDNN skip what backward needs."""
    out, h, c = torch.lstm(x, state, [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, train, False, False)
    return out, (h, c)


LSTM_KERNELS = ("auto", "fused", "own")  # how WeightDropLSTM runs its sequence
OWN_MIN_STEP_WORK = 2 ** 25  # batch * hidden * (input + hidden) at which ours broke even here


def own_recurrence_is_faster(x, hidden_size):
    """True where lstm_sequence beats the fused kernel on this project's CPU: training
    (gradients on) on CPU under bfloat16 autocast, with time steps large enough to hide the
    per-step Python overhead. Ours wins there because it leaves the weight and input gradients
    to three large matmuls, where oneDNN's bf16 LSTM backward runs well below the matmul speed;
    it loses in fp32, at small steps, in evaluation (no backward to win back) and to cuDNN.
    The threshold and the timings behind it: bench_lstm.py, results/bench-lstm-kernels-cpu*.json
    and the README's speed section."""
    batch, inputs = x.shape[1:]
    return (x.device.type == "cpu" and torch.is_grad_enabled()
            and compute_dtype("cpu", None) == torch.bfloat16  # under bf16 autocast
            and batch * hidden_size * (inputs + hidden_size) >= OWN_MIN_STEP_WORK)


# Tokens whose logits are made at a time. Training takes a whole AWD-LSTM batch (80 x up to 90
# steps) in one chunk: larger matmuls, and one fp32 update of the decoder's gradient instead of
# one per chunk. Scoring keeps an fp32 copy of each chunk for its log-softmax, so it uses less.
LOSS_ROWS = 8192
SCORE_ROWS = 2048


def _chunks(features, targets, rows):
    """(start, features rows, their targets) for each block of `rows` tokens."""
    for start in range(0, features.size(0), rows):
        yield start, features[start:start + rows], targets[start:start + rows]


class Workspace:
    """Scratch (rows, vocab) matrices for linear_cross_entropy and linear_scores, one per name and
    dtype, reused by every chunk and, when the caller keeps the Workspace, by every call: on CPU a
    fresh buffer this large is page-faulted in on each allocation, which costs as much as a pass
    over it.

    factor_weight_grad=True: linear_cross_entropy takes its tokens in one chunk and leaves the
    decoder weight's gradient here as a LowRankGradient (take_weight_grad) instead of giving it to
    autograd, which sees no gradient for that weight (torch.autograd.grad(..., allow_unused=True)
    returns None for it). Its parts live in this workspace's scratch memory, so the caller uses
    them up before the next call: dynamic evaluation, whose 5-token gradient is rank 5."""

    def __init__(self, factor_weight_grad=False):
        self.flat = {}
        self.factor_weight_grad = factor_weight_grad
        self.weight_grad = None

    def matrix(self, rows, cols, dtype, device, name="logits"):
        flat = self.flat.get((name, dtype))
        if flat is None or flat.numel() < rows * cols or flat.device != device:
            flat = self.flat[name, dtype] = torch.empty(rows * cols, dtype=dtype, device=device)
        return flat[:rows * cols].view(rows, cols)

    def take_weight_grad(self):
        """The LowRankGradient of the last backward pass (factor_weight_grad=True), handed over
        once; None when there is none."""
        grad, self.weight_grad = self.weight_grad, None
        return grad


class LowRankGradient:
    """The gradient of a (vocab, d) decoder weight, left in its parts: left.T @ right, with left
    (k, vocab) the loss's gradient with respect to the k tokens' logits and right (k, d) their
    features, plus, when the embedding lookup shares the weight, the lookup's gradient rows
    (m, d) added at the rows `ids` (m,). For dynamic evaluation's 5 tokens the parts are a
    thousandth of the dense gradient: an update that forms each entry of left.T @ right as it
    reads the weight never writes or reads the (vocab, d) matrix."""

    def __init__(self, weight, left, right):
        self.weight, self.left, self.right = weight, left, right
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


# Calls with at least this many rows in all read the decoder weight from a contiguous transposed
# copy, made once per call; fewer rows (the baseline's 20 x 35 batches, dynamic evaluation's
# 5-token segments) read a transposed view of it (results/decoder/).
CONTIGUOUS_MIN_ROWS = 4096


def _decoder_operands(weight, bias, dtype, rows):
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
# (results/eval-methods/SPEED.md).
FEW_ROWS = 16
BLOCK_ROWS = 2048


def _few_rows(x, weight):
    return x.device.type == "cpu" and weight.dtype == torch.float32 and x.size(0) <= FEW_ROWS


def _logits_(out, x, w, w_t, b):
    """out (rows, vocab) <- x @ w_t + b, the logits of x (rows, d); w_t is w.T or its contiguous copy."""
    if _few_rows(x, w):
        out.copy_(torch.addmm(b[:, None], w, x.t()).t())
    else:
        torch.addmm(b, x, w_t, out=out)


def _features_gradient(grad_logits, w):
    """grad_logits (rows, vocab) @ w (vocab, d)."""
    if not _few_rows(grad_logits, w):
        return grad_logits @ w
    out = grad_logits.new_zeros(grad_logits.size(0), w.size(1))
    for start in range(0, w.size(0), BLOCK_ROWS):
        out.addmm_(grad_logits[:, start:start + BLOCK_ROWS], w[start:start + BLOCK_ROWS])
    return out


def _score_chunk(logits, log_probs, targets, mix=None, start=0):
    """(summed target log-likelihood (fp32), correct argmax predictions (float64)) of one chunk's
    logits (rows, vocab), both counted on its log-softmax, taken in fp32 in log_probs: logits
    itself when they are fp32 and may be overwritten, else a buffer of their shape. With mix (see
    linear_scores), mix(start, log_probs, targets) scores the chunk instead."""
    if log_probs is not logits:
        log_probs.copy_(logits)
    torch.log_softmax(log_probs, dim=1, out=log_probs)
    if mix is not None:
        return mix(start, log_probs, targets)
    return model_scores(log_probs, targets)


def model_scores(log_probs, targets):
    """(summed target log-likelihood (fp32), correct argmax predictions (float64)) of a chunk's
    fp32 log-probabilities (rows, vocab): how every score here counts the model alone."""
    return log_probs.gather(1, targets[:, None]).sum(), argmax_hits_(log_probs, targets)


def _softmax_minus_onehot_(probs, targets):
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


def _weight_product(probs, x):
    """probs.T @ x, (vocab, d). On CPU in bf16 the matmul reads a transposed (rows, vocab) matrix
    much slower than it reads both operands as stored, so there it is (x.T @ probs).T, a
    transposed view that the caller reads once: in the cast to the weight's dtype, or in the sum
    it is added to (results/decoder/)."""
    if probs.device.type == "cpu" and probs.dtype == torch.bfloat16:
        return (x.t().contiguous() @ probs).t()
    return probs.t() @ x


def _weight_gradient(probs, x, weight):
    """probs.T @ x (vocab, d) in the weight's dtype, in a new contiguous tensor (autograd would
    copy a transposed one into the weight's layout)."""
    return _weight_product(probs, x).to(weight.dtype, memory_format=torch.contiguous_format)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss *and* its gradients, one chunk of rows at a time; backward
    only scales them by the incoming gradient. The (tokens, vocab) logits, their softmax and
    its gradient never exist whole, which saves most of the memory traffic of the softmax.
    With score=True it also scores the same logits as linear_scores does, and returns the
    summed nats and correct predictions (not differentiable) after the loss. With a TiedGradient
    that an embedding lookup of the weight has joined, the weight's gradient goes to it. With a
    Workspace(factor_weight_grad=True), the weight's gradient is a LowRankGradient (see there)."""

    @staticmethod
    def forward(ctx, features, weight, bias, targets, rows, workspace, score, tied, mix):
        device = features.device
        dtype = compute_dtype(device.type, features.dtype)  # of the matmul operands
        n = features.size(0)
        factored = workspace.factor_weight_grad
        rows = n if factored else min(rows, n)  # factored: one chunk, whose softmax gradient is `left`
        grad_features = torch.empty_like(features)
        grad_weight = grad_bias = None  # fp32 sums over chunks, in the weight's dtype
        loss = torch.zeros((), dtype=torch.float32, device=device)
        nats = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        probs_all = workspace.matrix(rows, weight.size(0), dtype, device)
        log_probs_all = workspace.matrix(rows, weight.size(0), torch.float32, device, "log_probs") if score else None
        # The mean's 1/n goes on the softmax's gradient when that is the smaller (a few rows, as in
        # dynamic evaluation), else on the summed gradients.
        scale_probs = factored or rows < weight.size(1)
        with torch.autocast(device.type, enabled=False):
            w, w_t, b = _decoder_operands(weight, bias, dtype, n)
            for start, x, t in _chunks(features.to(dtype), targets, rows):
                probs = probs_all[:x.size(0)]
                _logits_(probs, x, w, w_t, b)
                if score:
                    log_likelihood, hits = _score_chunk(probs, log_probs_all[:x.size(0)], t, mix, start)
                    nats -= log_likelihood
                    correct += hits
                loss += _softmax_minus_onehot_(probs, t)  # probs is now d loss / d logits
                if scale_probs:
                    probs.div_(n)
                grad_features[start:start + x.size(0)] = _features_gradient(probs, w)
                if factored:
                    grad_weight, grad_bias = LowRankGradient(weight, probs, x.detach()), probs.sum(0).to(bias.dtype)
                elif grad_weight is None:
                    grad_weight, grad_bias = _weight_gradient(probs, x, weight), probs.sum(0).to(bias.dtype)
                else:
                    grad_weight.add_(_weight_product(probs, x))
                    grad_bias.add_(probs.sum(0))
        ctx.grads = (grad_features, grad_weight, grad_bias)
        if not scale_probs:
            torch._foreach_div_(ctx.grads, n)
        ctx.tied, ctx.workspace = tied, workspace
        ctx.mark_non_differentiable(nats, correct)
        return loss / n, nats, correct

    @staticmethod
    def backward(ctx, grad_loss, grad_nats, grad_correct):
        grads = list(ctx.grads)
        del ctx.grads  # differentiable once
        low_rank = grads[1] if isinstance(grads[1], LowRankGradient) else None
        if grad_loss.device.type != "cpu" or grad_loss.item() != 1:  # on CPU, skip a pass when it is 1
            torch._foreach_mul_([g for g in grads if torch.is_tensor(g)], grad_loss)
            if low_rank is not None:
                low_rank.left.mul_(grad_loss)
        if ctx.tied is not None and ctx.tied.lookup:
            ctx.tied.grad, grads[1] = grads[1], None
        if low_rank is not None:  # autograd gets none: the caller takes it from the workspace
            ctx.workspace.weight_grad, grads[1] = low_rank, None
        return *grads, None, None, None, None, None, None


def linear_cross_entropy(features, weight, bias, targets, rows=LOSS_ROWS, workspace=None, score=False, tied=None,
                         mix=None):
    """Mean cross-entropy of softmax(features @ weight.T + bias) against targets, the same value
    and gradients as F.cross_entropy(F.linear(...)) but computed `rows` tokens at a time.

    features (tokens, d) with tokens >= 1; weight (vocab, d) and bias (vocab,) fp32, receiving
    fp32 gradients; targets (tokens,). Under bf16 autocast the matmul operands (features, weight,
    logits and their gradient) are bf16, while the loss, the target entries' gradients (see
    _softmax_minus_onehot_) and the sums over chunks are fp32. Differentiable once (no double
    backward). Pass a Workspace kept across calls to reuse its scratch memory.

    With score=True, returns (loss, summed nats, correct predictions): the last two are what
    linear_scores would count on chunks of the same rows, from the same logits, computed once
    (with mix, see linear_scores, under its mixture; the loss stays the model's own).
    tied: the TiedGradient of this pass when weight is also an embedding (see tied_embedding).
    """
    workspace = Workspace() if workspace is None else workspace
    loss, nats, correct = _LinearCrossEntropy.apply(features, weight, bias, targets, rows, workspace, score, tied,
                                                    mix)
    return (loss, nats, correct) if score else loss


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


@torch.no_grad()
def linear_scores(features, weight, bias, targets, rows=SCORE_ROWS, workspace=None, mix=None):
    """(summed cross-entropy in nats, number of correct argmax predictions) of the decoder over
    features (tokens, d) against targets (tokens,), as float64 scalars on the device. The logits
    are made in the compute dtype (bf16 under autocast) and the log-softmax is taken in fp32.

    mix(start, log_probs, targets), when given, scores each chunk instead, from its fp32
    log-probabilities (which it may overwrite) and the index of its first row: it returns the
    chunk's summed target log-likelihood and its correct predictions (e.g. cache.PointerCache)."""
    dtype = compute_dtype(features.device.type, features.dtype)
    features = features.to(dtype)
    shape = (min(rows, features.size(0)), weight.size(0))
    w, w_t, b = _decoder_operands(weight, bias, dtype, features.size(0))
    nats = features.new_zeros((), dtype=torch.float64)
    correct = features.new_zeros((), dtype=torch.float64)
    workspace = Workspace() if workspace is None else workspace
    logits = workspace.matrix(*shape, dtype, features.device)
    log_probs = logits if dtype == torch.float32 else workspace.matrix(*shape, torch.float32, features.device)
    with torch.autocast(features.device.type, enabled=False):
        for start, x, t in _chunks(features, targets, rows):
            chunk_logits, chunk_log_probs = logits[:x.size(0)], log_probs[:x.size(0)]
            _logits_(chunk_logits, x, w, w_t, b)
            log_likelihood, hits = _score_chunk(chunk_logits, chunk_log_probs, t, mix, start)
            nats -= log_likelihood
            correct += hits
    return nats, correct
