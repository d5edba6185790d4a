"""The quasi-recurrent neural network (QRNN) of Bradbury, Merity, Xiong & Socher (2017),
"Quasi-Recurrent Neural Networks", as the original AWD-LSTM code runs it with `--model QRNN`
(its model.py builds salesforce/pytorch-qrnn's QRNNLayer).

One layer: a convolution over time, computed as one matmul over all time steps at once, gives
three gate pre-activations per step, z (candidate), f (forget) and o (output); fo-pooling is the
only recurrence, and it is elementwise:

    c_t = f_t * z_t + (1 - f_t) * c_{t-1},    h_t = sigmoid(o_t) * c_t

with z = tanh(.), f = sigmoid(.). This is the original code's convention: f weights the new
candidate. The paper writes c_t = f_t * c_{t-1} + (1 - f_t) * z_t; the two are the same model
with the forget pre-activation's sign flipped (sigmoid(-a) = 1 - sigmoid(a)), and with
nn.Linear's initialization, symmetric about 0, even the same distribution of initial models.

Choices taken from the original code:
- the convolution's width ("window") is 2 in the first layer, so it sees the word pair
  (x_{t-1}, x_t), and 1 in the others; the operand of the matmul is [x_t, x_{t-1}];
- the output gate is always on (QRNN-fo), zoneout is off;
- the previous input is carried across batches ("save_prev_x"), so that the first step of a
  batch sees the last token of the one before. Here it is part of the layer's state, beside
  c_{t-1}, so it is detached and reset with the rest of the hidden state;
- weight drop (DropConnect) acts on the layer's whole linear weight, not its bias;
- the language model is AWD-LSTM's with the LSTM layers replaced: embedding dropout, locked
  dropout on the input, between layers and on the output, a decoder tied to the embedding.

fo-pooling runs in pure PyTorch on any device, through an autograd Function with a hand-written
reverse-time backward: one fused multiply-add per time step each way, where autograd's graph
records several nodes per step.
"""
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from lm.head import LanguageModel
from model import AWDLSTM, AWDConfig, ConfigMixin, dropout_mask


class _ForgetMult(torch.autograd.Function):
    """c_t = f_t * z_t + (1 - f_t) * c_{t-1} over t, from c0. f, z (seq_len, batch, hidden) and
    c0 (1, batch, hidden), all in one dtype; returns c (seq_len, batch, hidden)."""

    @staticmethod
    def forward(ctx, f, z, c0):
        keep = 1 - f
        fz = f * z
        c = torch.empty_like(fz)
        prev = c0[0]
        for t in range(f.size(0)):
            prev = torch.addcmul(fz[t], keep[t], prev, out=c[t])
        ctx.save_for_backward(f, z, c0, c)
        return c

    @staticmethod
    def backward(ctx, grad_c):
        # g_t, the gradient reaching c_t from the loss and from c_{t+1}, runs backwards in time:
        # g_t = grad_c[t] + (1 - f_{t+1}) * g_{t+1}. Then dz_t = f_t g_t, df_t = (z_t - c_{t-1}) g_t
        # and dc0 = (1 - f_0) g_0.
        f, z, c0, c = ctx.saved_tensors
        keep = 1 - f
        g = torch.empty_like(c)
        g[-1] = grad_c[-1]
        for t in range(f.size(0) - 2, -1, -1):
            torch.addcmul(grad_c[t], keep[t + 1], g[t + 1], out=g[t])
        prev = torch.cat([c0, c[:-1]])
        return (z - prev) * g, f * g, keep[:1] * g[:1]


def fo_pool(f, z, c0):
    """fo-pooling's memory: c_t = f_t * z_t + (1 - f_t) * c_{t-1}, (seq_len, batch, hidden), from
    forget gates f and candidates z of that shape and c0 (1, batch, hidden). Computed in fp32 at
    least (float64 stays float64), whatever autocast gave f and z, since c sums over the whole
    sequence."""
    dtype = torch.promote_types(z.dtype, torch.float32)
    return _ForgetMult.apply(f.to(dtype).contiguous(), z.to(dtype).contiguous(), c0.to(dtype))


class QRNNLayer(nn.Module):
    """One QRNN-fo layer with weight drop; see the module's docstring.

    The state is (c, prev): c (1, batch, hidden_size) is the last memory c_{t-1}, and prev
    (window - 1, batch, input_size) the last window - 1 inputs, oldest first (empty for window
    1); zeros at the start of a text. forward(x, state) -> (h, new state) with x (seq_len, batch,
    input_size) and h (seq_len, batch, hidden_size), fp32 at least.

    The weight (3 * hidden, window * input) maps [x_t, x_{t-1}, ...] to the (z, f, o)
    pre-activations; in training a DropConnect mask of its shape is drawn once per forward call
    (every step shares it), kept weights scaled by 1/(1-p); identity in eval mode. nn.Linear's
    initialization, as the original's nn.Linear has.
    """

    def __init__(self, input_size, hidden_size, window=1, weight_drop=0.0):
        super().__init__()
        if window < 1:
            raise ValueError(f"a QRNN window must be at least 1, got {window}")
        self.input_size, self.hidden_size, self.window, self.weight_drop = input_size, hidden_size, window, weight_drop
        linear = nn.Linear(window * input_size, 3 * hidden_size)
        self.weight, self.bias = linear.weight, linear.bias

    def dropped_weight(self):
        """The weight of this forward call: DropConnect in training, the weight itself in eval."""
        if self.training and self.weight_drop:
            return self.weight * dropout_mask(self.weight.shape, self.weight_drop, self.weight.device)
        return self.weight

    def windowed(self, x, prev):
        """([x_t, x_{t-1}, ..., x_{t-window+1}] for each t, (seq_len, batch, window * input), and
        the last window - 1 inputs, the next call's prev."""
        seq = torch.cat([prev.to(x.dtype), x]) if self.window > 1 else x
        steps = x.size(0)
        shifted = [seq[self.window - 1 - k:self.window - 1 - k + steps] for k in range(self.window)]
        return torch.cat(shifted, dim=2) if self.window > 1 else x, seq[seq.size(0) - (self.window - 1):]

    def forward(self, x, state):
        c0, prev = state
        source, last = self.windowed(x, prev)
        gates = F.linear(source, self.dropped_weight(), self.bias)  # (seq_len, batch, 3 * hidden)
        z, f, o = gates.to(torch.promote_types(gates.dtype, torch.float32)).chunk(3, dim=2)
        c = fo_pool(torch.sigmoid(f), torch.tanh(z), c0)
        return torch.sigmoid(o) * c, (c[-1:], last)

    def init_state(self, batch_size, like):
        """Zero state for batch_size sequences, in like's dtype and device."""
        return (like.new_zeros(1, batch_size, self.hidden_size),
                like.new_zeros(self.window - 1, batch_size, self.input_size))

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, window={self.window}, weight_drop={self.weight_drop}"


@dataclass
class QRNNConfig(ConfigMixin):
    """QRNN language model sizes and dropout rates, named as AWDConfig names them. Defaults are
    the original code's WikiText-2 QRNN command (its README: 4 layers of 1550, --dropouti 0.4
    --dropouth 0.2 --wdrop 0.1, the other rates its defaults)."""
    vocab_size: int
    model: str = "qrnn"
    emsize: int = 400  # embedding size, also the last layer's size when tied
    nhid: int = 1550  # hidden units of the other layers
    nlayers: int = 4
    window: int = 2  # the first layer's convolution width; the other layers' is 1
    dropout_embedding: float = 0.1  # whole words dropped from the embedding matrix [dropoute]
    dropout_input: float = 0.4  # locked dropout on the embedding output [dropouti]
    dropout_hidden: float = 0.2  # locked dropout between layers [dropouth]
    dropout_output: float = 0.4  # locked dropout on the last layer's output [dropout]
    dropout_weight: float = 0.1  # DropConnect on each layer's linear weight [wdrop]
    locked_dropout: bool = True  # False: a fresh mask per time step (ablation)
    tied: bool = True

    layer_sizes = AWDConfig.layer_sizes  # (input, hidden) of each layer, the last emsize when tied

    def __post_init__(self):
        if self.model != "qrnn":
            raise ValueError(f"QRNNConfig is for model 'qrnn', not {self.model!r}")
        if min(self.vocab_size, self.emsize, self.nhid, self.nlayers, self.window) < 1:
            raise ValueError("vocab_size, emsize, nhid, nlayers and window must be positive")
        for f in fields(self):
            if f.name.startswith("dropout") and not 0 <= getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be in [0, 1), got {getattr(self, f.name)}")

    def windows(self):
        return [self.window] + [1] * (self.nlayers - 1)


class QRNNModel(AWDLSTM):
    """AWD-LSTM with QRNN layers, as the original code's one model class runs either: the
    forward pass (features), its masks and their order are AWDLSTM's, the recurrent layers
    QRNNLayer. hidden: one (c, prev) per layer (see QRNNLayer); every tensor has the batch in
    dimension 1, so model.detach_hidden and model.map_hidden treat it as they treat an LSTM's."""

    lstm_kernel = LanguageModel.lstm_kernel  # no LSTM layers: every kernel choice is a no-op

    @staticmethod
    def recurrent_layers(cfg, lstm_kernel):
        """The weight-dropped QRNN layers: window 2 on the first, 1 on the others (cfg.windows)."""
        return [QRNNLayer(i, h, w, cfg.dropout_weight)
                for (i, h), w in zip(cfg.layer_sizes(), cfg.windows(), strict=True)]

    def init_hidden(self, batch_size):
        return [rnn.init_state(batch_size, self.encoder.weight) for rnn in self.rnns]
