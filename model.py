"""Recurrent language models: the classic baseline and AWD-LSTM.

RNNModel is the classic baseline (pytorch/examples word_language_model, Zaremba et al. 2014):
embedding -> dropout -> stacked LSTM/GRU/RNN with dropout between layers -> dropout -> decoder,
with optional weight tying of the decoder to the embedding (Press & Wolf 2017; Inan et al. 2017).

AWDLSTM is the model of Merity, Keskar & Socher (2017), "Regularizing and Optimizing LSTM
Language Models" (section numbers below refer to it): embedding dropout -> locked dropout ->
weight-dropped LSTM layers with locked dropout between them -> locked dropout -> tied decoder.

Both return an LMOutput; `raw` and `dropped` (the last layer's output before and after its
dropout) feed the AR/TAR penalties of train.py.
"""
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

RNN_TYPES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
MODEL_TYPES = (*RNN_TYPES, "awd-lstm")


class LMOutput(NamedTuple):
    logits: torch.Tensor  # (seq_len, batch, vocab)
    hidden: object  # recurrent state to pass to the next call
    raw: torch.Tensor  # last layer's output, (seq_len, batch, features), before output dropout
    dropped: torch.Tensor  # the same after output dropout (what the decoder sees)


def _check_common(cfg):
    if cfg.tied and cfg.nhid != cfg.emsize and cfg.model != "awd-lstm":
        raise ValueError(f"--tied needs --nhid equal to --emsize (got nhid {cfg.nhid}, "
                         f"emsize {cfg.emsize}): the decoder reuses the embedding matrix")
    if min(cfg.vocab_size, cfg.emsize, cfg.nhid, cfg.nlayers) < 1:
        raise ValueError("vocab_size, emsize, nhid and nlayers must be positive")
    for f in fields(cfg):
        if f.name.startswith("dropout") and not 0 <= getattr(cfg, f.name) < 1:
            raise ValueError(f"{f.name} must be in [0, 1), got {getattr(cfg, f.name)}")


class ConfigMixin:
    @classmethod
    def from_dict(cls, d):
        """Rebuild from to_dict() output, as stored in a checkpoint."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self):
        return asdict(self)


@dataclass
class ModelConfig(ConfigMixin):
    vocab_size: int
    model: str = "lstm"  # one of RNN_TYPES
    emsize: int = 200  # embedding size
    nhid: int = 200  # hidden units per layer
    nlayers: int = 2
    dropout: float = 0.2  # on the embedding, between layers and on the last output
    tied: bool = False  # decoder weight is the embedding matrix

    def __post_init__(self):
        if self.model not in RNN_TYPES:
            raise ValueError(f"unknown model {self.model!r}: choose one of {', '.join(RNN_TYPES)}")
        _check_common(self)

    def layer_sizes(self):
        """(input, hidden) of each recurrent layer."""
        return [(self.emsize, self.nhid)] + [(self.nhid, self.nhid)] * (self.nlayers - 1)


@dataclass
class AWDConfig(ConfigMixin):
    """AWD-LSTM sizes and dropout rates, named by where they act (the paper's code's names in
    brackets). Defaults are the paper's code's defaults; train.py's presets hold the settings
    of each data set (e.g. dropout_hidden 0.2 for WikiText-2)."""
    vocab_size: int
    model: str = "awd-lstm"
    emsize: int = 400  # embedding size, also the last LSTM layer's size when tied
    nhid: int = 1150  # hidden units of the other LSTM layers
    nlayers: int = 3
    dropout_embedding: float = 0.1  # whole words dropped from the embedding matrix [dropoute]
    dropout_input: float = 0.65  # locked dropout on the embedding output [dropouti]
    dropout_hidden: float = 0.3  # locked dropout between LSTM layers [dropouth]
    dropout_output: float = 0.4  # locked dropout on the last LSTM output [dropout]
    dropout_weight: float = 0.5  # DropConnect on hidden-to-hidden weights [wdrop]
    locked_dropout: bool = True  # False: a fresh mask per time step (ablation)
    tied: bool = True

    def __post_init__(self):
        if self.model != "awd-lstm":
            raise ValueError(f"AWDConfig is for model 'awd-lstm', not {self.model!r}")
        _check_common(self)

    def layer_sizes(self):
        """(input, hidden) of each LSTM layer; the last one outputs emsize when tied."""
        last = self.emsize if self.tied else self.nhid
        outs = [self.nhid] * (self.nlayers - 1) + [last]
        return list(zip([self.emsize, *outs[:-1]], outs))


def dropout_mask(like, shape, p):
    """A dropout mask of `shape` in like's dtype and device: each entry kept with probability 1-p
    and then worth 1/(1-p), dropped entries 0. Thresholding torch.rand draws the same Bernoulli
    distribution as bernoulli_, about 4x faster on CPU (a 4600x1150 mask: 16 ms instead of 70)."""
    keep = 1 - p
    return (torch.rand(shape, device=like.device) < keep).to(like.dtype).div_(keep)


class LockedDropout(nn.Module):
    """Variational ("locked") dropout, Gal & Ghahramani (2016); AWD-LSTM Section 4.2.

    Input (seq_len, batch, features). One Bernoulli mask of shape (1, batch, features) is drawn
    per forward call and broadcast over time, so each sequence drops the same units at every
    step; kept units are scaled by 1/(1-p). With locked=False the mask is (seq_len, batch,
    features), i.e. ordinary dropout, for ablations. Identity in eval mode.
    """

    def __init__(self, p, locked=True):
        super().__init__()
        self.p, self.locked = p, locked

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        shape = (1, *x.shape[1:]) if self.locked else x.shape
        return x * dropout_mask(x, shape, self.p)

    def extra_repr(self):
        return f"p={self.p}, locked={self.locked}"


def embedding_dropout(weight, tokens, p, training):
    """Embedding dropout, Gal & Ghahramani (2016); AWD-LSTM Section 4.3.

    Drops whole words: one Bernoulli draw per row of the (vocab, emsize) embedding matrix, a mask
    of shape (vocab, 1), so every occurrence of a dropped word in the batch is zeroed; kept rows
    are scaled by 1/(1-p). Equivalent to masking the matrix, but only the looked-up rows are
    scaled. Identity in eval mode. tokens (seq_len, batch) -> (seq_len, batch, emsize).
    """
    emb = F.embedding(tokens, weight)
    if not training or p == 0:
        return emb
    return emb * dropout_mask(weight, (weight.size(0), 1), p)[tokens]


def compute_dtype(device_type, default):
    """The dtype that autocast gives matmuls on this device type, or `default` outside autocast."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else default


def _times_transposed(weight, rows):
    """x -> x @ weight.T for x of `rows` rows, called once per time step. On CPU in bf16 the
    weight is packed once into oneDNN's blocked layout, where a plain mm re-packs it on every
    call (~20% slower for an (80, 1150) x (1150, 4600) step in an unrecorded trial)."""
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
        recurrent = _times_transposed(w_hh.t().contiguous(), batch)  # dh_{t-1} = d_gates_t @ w_hh
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
    per-step Python overhead. oneDNN's bf16 LSTM backward runs at two thirds of the CPU's bf16
    matmul speed (results/profiles/); ours leaves the weight and input gradients to three large matmuls. Forward + backward
    of one layer (bench_lstm.py, results/bench-lstm-kernels-cpu*.json): 1.13-1.24x the fused
    kernel's speed on the AWD-LSTM WT2 layers (batch 80, 400/1150 units), 1.03-1.05x at batch
    64 x 512 units (the threshold), 0.5-0.6x at batch 32 x 256. In fp32 ours runs at 0.66-0.69x
    on the WT2 layers, and on CUDA cuDNN is far ahead, so those keep torch.lstm; so does
    evaluation, which has no backward for ours to win back."""
    batch, inputs = x.shape[1:]
    return (x.device.type == "cpu" and torch.is_grad_enabled()
            and compute_dtype("cpu", None) == torch.bfloat16  # under bf16 autocast
            and batch * hidden_size * (inputs + hidden_size) >= OWN_MIN_STEP_WORK)


class WeightDropLSTM(nn.Module):
    """One LSTM layer with DropConnect on its hidden-to-hidden matrix; AWD-LSTM Section 2.

    A mask of weight_hh's shape (4*hidden, hidden) is drawn once per forward call; since the
    whole sequence runs with that one dropped matrix, every time step shares the mask. Kept
    weights are scaled by 1/(1-p). Identity in eval mode. The raw matrix stays the registered
    Parameter and the dropped one is computed from it, so gradients reach it. The mask is drawn
    by dropout_mask. The sequence runs in the fused LSTM kernel (oneDNN on CPU, cuDNN on CUDA),
    or in lstm_sequence: `kernel` "auto" picks it where own_recurrence_is_faster, "fused" and
    "own" force one (for benchmarks and other machines; both compute the same function).
    On CUDA the four weights are packed into one contiguous buffer in cuDNN's order, so that it
    reads them in place.
    """

    def __init__(self, input_size, hidden_size, weight_drop=0.0, kernel="auto"):
        super().__init__()
        if kernel not in LSTM_KERNELS:
            raise ValueError(f"unknown LSTM kernel {kernel!r}: choose one of {', '.join(LSTM_KERNELS)}")
        self.input_size, self.hidden_size, self.weight_drop = input_size, hidden_size, weight_drop
        self.kernel = kernel
        gates = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates))
        self.bias_hh = nn.Parameter(torch.empty(gates))
        bound = hidden_size ** -0.5  # nn.LSTM's initialization
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def dropped_weights(self):
        """[weight_ih, dropped weight_hh, bias_ih, bias_hh] for this forward call."""
        w_hh = self.weight_hh
        if self.training and self.weight_drop:
            w_hh = w_hh * dropout_mask(w_hh, w_hh.shape, self.weight_drop)
        weights = [self.weight_ih, w_hh, self.bias_ih, self.bias_hh]
        if self.weight_hh.is_cuda:  # packed in the dtype cuDNN will read (bf16 under autocast)
            dtype = compute_dtype("cuda", w_hh.dtype)
            flat = torch.cat([w.reshape(-1).to(dtype) for w in weights])
            weights = [v.view_as(w) for v, w in zip(flat.split([w.numel() for w in weights]), weights)]
        return weights

    def forward(self, x, state):
        """x (seq_len, batch, input_size), state (h, c) each (1, batch, hidden_size)."""
        if self.kernel == "own" or (self.kernel == "auto" and own_recurrence_is_faster(x, self.hidden_size)):
            return lstm_sequence(x, state, *self.dropped_weights())
        return fused_lstm(x, state, *self.dropped_weights(), train=self.training)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, weight_drop={self.weight_drop}, kernel={self.kernel}"


class AWDLSTM(nn.Module):
    """AWD-LSTM: embedding (+ embedding dropout) -> locked dropout -> weight-dropped LSTM layers
    with locked dropout between them -> locked dropout -> decoder tied to the embedding."""

    def __init__(self, cfg: AWDConfig, lstm_kernel="auto"):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.emsize)
        self.rnns = nn.ModuleList(WeightDropLSTM(i, h, cfg.dropout_weight, lstm_kernel)
                                  for i, h in cfg.layer_sizes())
        self.drop_input = LockedDropout(cfg.dropout_input, cfg.locked_dropout)
        self.drop_hidden = LockedDropout(cfg.dropout_hidden, cfg.locked_dropout)
        self.drop_output = LockedDropout(cfg.dropout_output, cfg.locked_dropout)
        self.decoder = nn.Linear(cfg.layer_sizes()[-1][1], cfg.vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if cfg.tied:
            self.decoder.weight = self.encoder.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens, hidden, decode=True):
        """tokens (seq_len, batch); hidden: one (h, c) per layer, each (1, batch, size). With
        decode=False the logits are left to the caller (LMOutput.logits is None): training and
        evaluation score `dropped` against the decoder chunk by chunk (linear_cross_entropy)."""
        x = embedding_dropout(self.encoder.weight, tokens, self.cfg.dropout_embedding, self.training)
        x = self.drop_input(x)  # (seq_len, batch, emsize)
        new_hidden = []
        for i, (rnn, state) in enumerate(zip(self.rnns, hidden)):
            x, state = rnn(x, state)  # (seq_len, batch, layer size)
            new_hidden.append(state)
            if i < len(self.rnns) - 1:
                x = self.drop_hidden(x)
        dropped = self.drop_output(x)
        return LMOutput(self.decoder(dropped) if decode else None, new_hidden, x, dropped)

    def init_hidden(self, batch_size):
        weight = self.encoder.weight
        return [(weight.new_zeros(1, batch_size, h), weight.new_zeros(1, batch_size, h))
                for _, h in self.cfg.layer_sizes()]


class RNNModel(nn.Module):
    """Embedding -> recurrent stack -> linear decoder, returning logits over the vocabulary."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.emsize)
        layer_dropout = cfg.dropout if cfg.nlayers > 1 else 0.0
        if cfg.model == "lstm":
            self.rnn = nn.LSTM(cfg.emsize, cfg.nhid, cfg.nlayers, dropout=layer_dropout)
        elif cfg.model == "gru":
            self.rnn = nn.GRU(cfg.emsize, cfg.nhid, cfg.nlayers, dropout=layer_dropout)
        else:
            self.rnn = nn.RNN(cfg.emsize, cfg.nhid, cfg.nlayers, dropout=layer_dropout,
                              nonlinearity=cfg.model.removeprefix("rnn_"))
        self.decoder = nn.Linear(cfg.nhid, cfg.vocab_size)
        if cfg.tied:
            self.decoder.weight = self.encoder.weight
        self.init_weights()

    def init_weights(self, initrange=0.1):
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        if not self.cfg.tied:
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, tokens, hidden, decode=True):
        """tokens (seq_len, batch) -> LMOutput with logits (seq_len, batch, vocab), or None
        with decode=False (see AWDLSTM.forward)."""
        emb = self.drop(self.encoder(tokens))  # (seq_len, batch, emsize)
        out, hidden = self.rnn(emb, hidden)  # (seq_len, batch, nhid)
        dropped = self.drop(out)
        return LMOutput(self.decoder(dropped) if decode else None, hidden, out, dropped)

    def init_hidden(self, batch_size):
        """Zero state: (h, c) for an LSTM, h otherwise, each (nlayers, batch, nhid)."""
        weight = self.encoder.weight
        shape = (self.cfg.nlayers, batch_size, self.cfg.nhid)
        if self.cfg.model == "lstm":
            return (weight.new_zeros(shape), weight.new_zeros(shape))
        return weight.new_zeros(shape)


def activation_regularization(dropped, alpha):
    """AR, AWD-LSTM Section 4.6: alpha * mean(h_t^2) over the last layer's output *after* its
    dropout, (seq_len, batch, features). Penalizes large activations. Computed in fp32."""
    return alpha * dropped.float().pow(2).mean() if alpha else dropped.new_zeros((), dtype=torch.float32)


def temporal_activation_regularization(raw, beta):
    """TAR, AWD-LSTM Section 4.6: beta * mean((h_t - h_{t-1})^2) over the last layer's output
    *before* dropout, (seq_len, batch, features). Penalizes fast-changing hidden states.
    Computed in fp32."""
    if not beta or raw.size(0) < 2:
        return raw.new_zeros((), dtype=torch.float32)
    raw = raw.float()
    return beta * (raw[1:] - raw[:-1]).pow(2).mean()


DTYPES = ("fp32", "bf16")


def autocast(device, dtype):
    """Mixed precision for dtype "bf16": matmuls and the LSTM kernels run in bfloat16 while the
    weights, their gradients and the optimizer stay fp32 ("master weights"). "fp32" is a no-op."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def bf16_is_fast(device):
    """True where bfloat16 matmuls run natively: CUDA GPUs that support it, and CPUs with
    AVX512-BF16 or AMX (on other CPUs bf16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


DECODE_ROWS = 2048  # logits are made for this many tokens at a time: (2048, vocab) floats


def _chunks(features, targets, rows):
    """(start, features rows, their targets) for each block of `rows` tokens."""
    for start in range(0, features.size(0), rows):
        yield start, features[start:start + rows], targets[start:start + rows]


class Workspace:
    """Scratch (rows, vocab) matrices for linear_cross_entropy and linear_scores, one per dtype,
    reused by every chunk and, when the caller keeps the Workspace, by every call: on CPU a fresh
    buffer this large is page-faulted in on each allocation (~40 ms per 2048 x 33k floats)."""

    def __init__(self):
        self.flat = {}

    def matrix(self, rows, cols, dtype, device):
        flat = self.flat.get(dtype)
        if flat is None or flat.numel() < rows * cols or flat.device != device:
            flat = self.flat[dtype] = torch.empty(rows * cols, dtype=dtype, device=device)
        return flat[:rows * cols].view(rows, cols)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss *and* its gradients, one chunk of rows at a time; backward
    only scales them by the incoming gradient. The (tokens, vocab) logits, their softmax and
    its gradient never exist whole, which saves most of the memory traffic of the softmax."""

    @staticmethod
    def forward(ctx, features, weight, bias, targets, rows, workspace):
        dtype = features.dtype  # bfloat16 when the model ran under autocast
        grad_features, grad_weight, grad_bias = torch.empty_like(features), None, None
        loss = features.new_zeros((), dtype=torch.float32)
        probs_all = workspace.matrix(min(rows, features.size(0)), weight.size(0), dtype, features.device)
        with torch.autocast(features.device.type, enabled=False):
            w, b = weight.to(dtype), bias.to(dtype)
            for start, x, t in _chunks(features, targets, rows):
                probs = probs_all[:x.size(0)]
                torch.addmm(b, x, w.t(), out=probs)  # logits (rows, vocab)
                torch.softmax(probs, dim=1, out=probs)
                target_probs = probs.gather(1, t[:, None])
                loss -= target_probs.float().clamp_min(torch.finfo(torch.float32).tiny).log().sum()
                rows_here = torch.arange(t.size(0), device=t.device)
                probs.index_put_((rows_here, t), probs.new_tensor(-1.0), accumulate=True)  # d loss/d logits
                grad_features[start:start + x.size(0)] = probs @ w
                # Summed over chunks in fp32 (the weight's dtype).
                part_w, part_b = probs.t() @ x, probs.sum(0)
                grad_weight = part_w.to(weight.dtype) if grad_weight is None else grad_weight.add_(part_w)
                grad_bias = part_b.to(bias.dtype) if grad_bias is None else grad_bias.add_(part_b)
        n = features.size(0)
        ctx.grads = (grad_features.div_(n), grad_weight.div_(n), grad_bias.div_(n))
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grads = ctx.grads
        del ctx.grads  # differentiable once
        return *(g.mul_(grad_loss) for g in grads), None, None, None


def linear_cross_entropy(features, weight, bias, targets, rows=DECODE_ROWS, workspace=None):
    """Mean cross-entropy of softmax(features @ weight.T + bias) against targets, the same value
    and gradients as F.cross_entropy(F.linear(...)) but computed `rows` tokens at a time.

    features (tokens, d) in the compute dtype (fp32, or bf16 under autocast); weight (vocab, d)
    and bias (vocab,) fp32, receiving fp32 gradients; targets (tokens,). With bf16 features the
    logits and probabilities are bf16, as autocast would make them, and the loss is summed in
    fp32. Differentiable once (no double backward). Pass a Workspace kept across calls to reuse
    its scratch memory.
    """
    workspace = Workspace() if workspace is None else workspace
    return _LinearCrossEntropy.apply(features, weight, bias, targets, rows, workspace)


@torch.no_grad()
def linear_scores(features, weight, bias, targets, rows=DECODE_ROWS, workspace=None):
    """(summed cross-entropy in nats, number of correct argmax predictions) of the decoder over
    features (tokens, d) against targets (tokens,), as float64 scalars on the device. The logits
    are made in the features' dtype (bf16 under autocast) and the log-softmax is taken in fp32."""
    dtype = features.dtype
    w, b = weight.to(dtype), bias.to(dtype)
    nats = features.new_zeros((), dtype=torch.float64)
    correct = features.new_zeros((), dtype=torch.float64)
    workspace = Workspace() if workspace is None else workspace
    shape = (min(rows, features.size(0)), weight.size(0))
    logits = workspace.matrix(*shape, dtype, features.device)
    log_probs = logits if dtype == torch.float32 else workspace.matrix(*shape, torch.float32, features.device)
    with torch.autocast(features.device.type, enabled=False):
        for _, x, t in _chunks(features, targets, rows):
            chunk_logits, chunk_log_probs = logits[:x.size(0)], log_probs[:x.size(0)]
            torch.addmm(b, x, w.t(), out=chunk_logits)
            if log_probs is not logits:
                chunk_log_probs.copy_(chunk_logits)
            correct += (chunk_log_probs.argmax(1) == t).sum()  # argmax is ~4x faster in fp32 than bf16
            torch.log_softmax(chunk_log_probs, dim=1, out=chunk_log_probs)
            nats -= chunk_log_probs.gather(1, t[:, None]).sum()
    return nats, correct


def config_from_dict(d):
    """A checkpoint's model_config -> ModelConfig or AWDConfig."""
    return (AWDConfig if d.get("model") == "awd-lstm" else ModelConfig).from_dict(d)


def build_model(cfg, lstm_kernel="auto"):
    """The model of a config; lstm_kernel (see WeightDropLSTM) applies to AWD-LSTM only."""
    if isinstance(cfg, AWDConfig):
        return AWDLSTM(cfg, lstm_kernel)
    if lstm_kernel != "auto":
        raise ValueError(f"--lstm-kernel {lstm_kernel} applies to awd-lstm only, not to {cfg.model}")
    return RNNModel(cfg)


def map_hidden(fn, hidden):
    """Apply fn to every tensor of a recurrent state (a tensor, or nested tuples/lists of them)."""
    if isinstance(hidden, torch.Tensor):
        return fn(hidden)
    return tuple(map_hidden(fn, h) for h in hidden)


def detach_hidden(hidden):
    """Cut the graph between batches (truncated BPTT) while keeping the state's values, in fp32
    (LSTMs under bf16 autocast return bf16 states), so that a run may change --dtype."""
    return map_hidden(lambda h: h.detach().float(), hidden)
