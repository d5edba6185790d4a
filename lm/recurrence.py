"""The LSTM recurrence: one layer over a whole sequence, in our own kernel (lstm_sequence, with a
hand-written backward, for bf16 training on CPU where oneDNN's LSTM backward is slow) or in
PyTorch's fused one (fused_lstm: oneDNN, cuDNN), with the same arguments and results;
own_recurrence_is_faster says which to run, and lstm_layers runs an nn.LSTM's stack in ours.
tests/test_kernels.py pins that both compute torch.lstm's function."""
import torch
import torch.nn.functional as F

from lm.precision import compute_dtype


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


def check_lstm_kernel(kernel):
    """ValueError unless kernel is one of LSTM_KERNELS."""
    if kernel not in LSTM_KERNELS:
        raise ValueError(f"unknown LSTM kernel {kernel!r}: choose one of {', '.join(LSTM_KERNELS)}")


OWN_MIN_STEP_WORK = 2 ** 25  # batch * hidden * (input + hidden) at which ours broke even here


def own_recurrence_is_faster(x, hidden_size):
    """True where lstm_sequence beats the fused kernel on this project's CPU: training
    (gradients on) on CPU under bfloat16 autocast, with time steps large enough to hide the
    per-step Python overhead. Ours wins there because it leaves the weight and input gradients
    to three large matmuls, where oneDNN's bf16 LSTM backward runs well below the matmul speed;
    it loses in fp32, at small steps, in evaluation (no backward to win back) and to cuDNN.
    The threshold was chosen by measurement (python -m experiments.bench_lstm; see docs/speed.md)."""
    batch, inputs = x.shape[1:]
    return (x.device.type == "cpu" and torch.is_grad_enabled()
            and compute_dtype("cpu", None) == torch.bfloat16  # under bf16 autocast
            and batch * hidden_size * (inputs + hidden_size) >= OWN_MIN_STEP_WORK)


def lstm_layers(x, hidden, layer_weights, dropout=0.0, training=False):
    """What an nn.LSTM computes, a layer at a time in lstm_sequence, from its all_weights
    (layer_weights: [w_ih, w_hh, b_ih, b_hh] per layer): x (seq_len, batch, input), hidden (h, c)
    each (nlayers, batch, hidden); between layers, in training, nn.LSTM's dropout (its own masks,
    not nn.LSTM's draws). Returns (outputs, (h, c)) as nn.LSTM does."""
    h0, c0 = hidden
    last = []
    for k, weights in enumerate(layer_weights):
        if k:
            x = F.dropout(x, dropout, training)
        x, state = lstm_sequence(x, (h0[k:k + 1], c0[k:k + 1]), *weights)
        last.append(state)
    h, c = zip(*last, strict=True)
    return x, (torch.cat(h), torch.cat(c))
