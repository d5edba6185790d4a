"""Recurrent language models: the classic baseline and AWD-LSTM.

RNNModel is the classic baseline (pytorch/examples word_language_model, Zaremba et al. 2014):
embedding -> dropout -> stacked LSTM/GRU/RNN with dropout between layers -> dropout -> decoder,
with optional weight tying of the decoder to the embedding (Press & Wolf 2017; Inan et al. 2017).

AWDLSTM is the model of Merity, Keskar & Socher (2017), "Regularizing and Optimizing LSTM
Language Models" (section numbers below refer to it): embedding dropout -> locked dropout ->
weight-dropped LSTM layers with locked dropout between them -> locked dropout -> tied decoder.

Both run the network up to the decoder (`features`, which also returns the last layer's output
before and after its dropout for AR/TAR) and leave the rest to lm/head.py's LanguageModel.
Each regularizer (LockedDropout, embedding_dropout, WeightDropLSTM, AR, TAR) names its paper
section, its mask shape and what it does in eval mode.
"""
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from lm.decoder import tied_embedding
from lm.head import LanguageModel, LMOutput
from lm.precision import compute_dtype
from lm.recurrence import check_lstm_kernel, fused_lstm, lstm_layers, lstm_sequence, own_recurrence_is_faster

RNN_TYPES = ("lstm", "gru", "rnn_tanh", "rnn_relu")


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
        return list(zip([self.emsize, *outs[:-1]], outs, strict=True))


def dropout_mask(shape, p, device):
    """A dropout mask of `shape`, in fp32: each entry kept with probability 1-p and then worth
    1/(1-p), dropped entries 0. fp32 whatever the compute dtype, since 1/(1-p) rounded to bf16
    is off by up to 0.16% (a mask mean of 0.9984 at p = 0.4), the same way for every unit.
    Thresholding torch.rand draws the same Bernoulli distribution as bernoulli_, and is several
    times faster on CPU."""
    keep = 1 - p
    return (torch.rand(shape, device=device) < keep).float().div_(keep)


class LockedDropout(nn.Module):
    """Variational ("locked") dropout, Gal & Ghahramani (2016); AWD-LSTM Section 4.2.

    Input (seq_len, batch, features). One Bernoulli mask of shape (1, batch, features) is drawn
    per forward call and broadcast over time, so each sequence drops the same units at every
    step; kept units are scaled by 1/(1-p). With locked=False the mask is (seq_len, batch,
    features), i.e. ordinary dropout, for ablations. Identity in eval mode. The mask is fp32
    (see dropout_mask), so a bf16 input gives an fp32 output.
    """

    def __init__(self, p, locked=True):
        super().__init__()
        self.p, self.locked = p, locked

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        shape = (1, *x.shape[1:]) if self.locked else x.shape
        return x * dropout_mask(shape, self.p, x.device)

    def extra_repr(self):
        return f"p={self.p}, locked={self.locked}"


def embed(tokens, weight, tied=None):
    """weight[tokens]; with the TiedGradient of a pass whose decoder shares weight, the lookup's
    gradient is added into the decoder's in place (decoder.tied_embedding)."""
    return F.embedding(tokens, weight) if tied is None else tied_embedding(tokens, weight, tied)


def embedding_dropout(weight, tokens, p, training, tied=None):
    """Embedding dropout, Gal & Ghahramani (2016); AWD-LSTM Section 4.3.

    Drops whole words: one Bernoulli draw per row of the (vocab, emsize) embedding matrix, a mask
    of shape (vocab, 1), so every occurrence of a dropped word in the batch is zeroed; kept rows
    are scaled by 1/(1-p). Equivalent to masking the matrix, but only the looked-up rows are
    scaled. Identity in eval mode. tokens (seq_len, batch) -> (seq_len, batch, emsize).
    tied: see embed.
    """
    emb = embed(tokens, weight, tied)
    if not training or p == 0:
        return emb
    return emb * dropout_mask((weight.size(0), 1), p, weight.device)[tokens]


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
        check_lstm_kernel(kernel)
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
            w_hh = w_hh * dropout_mask(w_hh.shape, self.weight_drop, w_hh.device)
        weights = [self.weight_ih, w_hh, self.bias_ih, self.bias_hh]
        if self.weight_hh.is_cuda:  # packed in the dtype cuDNN will read (bf16 under autocast)
            dtype = compute_dtype("cuda", w_hh.dtype)
            flat = torch.cat([w.reshape(-1).to(dtype) for w in weights])
            weights = [v.view_as(w) for v, w in zip(flat.split([w.numel() for w in weights]), weights, strict=True)]
        return weights

    def forward(self, x, state):
        """x (seq_len, batch, input_size), state (h, c) each (1, batch, hidden_size)."""
        if self.kernel == "own" or (self.kernel == "auto" and own_recurrence_is_faster(x, self.hidden_size)):
            return lstm_sequence(x, state, *self.dropped_weights())
        return fused_lstm(x, state, *self.dropped_weights(), train=self.training)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, weight_drop={self.weight_drop}, kernel={self.kernel}"


class AWDLSTM(LanguageModel):
    """AWD-LSTM: embedding (+ embedding dropout) -> locked dropout -> weight-dropped LSTM layers
    with locked dropout between them -> locked dropout -> decoder tied to the embedding."""

    def __init__(self, cfg: AWDConfig, lstm_kernel="auto"):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.emsize)
        self.rnns = nn.ModuleList(self.recurrent_layers(cfg, lstm_kernel))
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

    @staticmethod
    def recurrent_layers(cfg, lstm_kernel):
        """The weight-dropped LSTM layers, in order; the QRNN swaps in its own (lm/qrnn.py)."""
        return [WeightDropLSTM(i, h, cfg.dropout_weight, lstm_kernel) for i, h in cfg.layer_sizes()]

    def features(self, tokens, hidden, tied=None):
        """tokens (seq_len, batch); hidden: one (h, c) per layer, each (1, batch, size); tied: see
        head.LanguageModel._tied_gradient. The masks are drawn in this order: embedding, input, then
        per layer its weight drop and, between layers, the hidden dropout, and last the output
        dropout."""
        x = embedding_dropout(self.encoder.weight, tokens, self.cfg.dropout_embedding, self.training, tied)
        x = self.drop_input(x)  # (seq_len, batch, emsize)
        new_hidden = []
        for i, (rnn, state) in enumerate(zip(self.rnns, hidden, strict=True)):
            x, state = rnn(x, state)  # (seq_len, batch, layer size)
            new_hidden.append(state)
            if i < len(self.rnns) - 1:
                x = self.drop_hidden(x)
        dropped = self.drop_output(x)
        return LMOutput(None, new_hidden, x, dropped)

    def init_hidden(self, batch_size):
        weight = self.encoder.weight
        return [(weight.new_zeros(1, batch_size, h), weight.new_zeros(1, batch_size, h))
                for _, h in self.cfg.layer_sizes()]

    @contextmanager
    def lstm_kernel(self, kernel):
        """Run the LSTM layers in `kernel` (see WeightDropLSTM) for the body, then as before."""
        saved = [rnn.kernel for rnn in self.rnns]
        for rnn in self.rnns:
            rnn.kernel = kernel
        try:
            yield
        finally:
            for rnn, k in zip(self.rnns, saved, strict=True):
                rnn.kernel = k


class RNNModel(LanguageModel):
    """Embedding -> dropout -> recurrent stack (dropout between layers) -> dropout -> decoder."""

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
        self.own_kernel = False  # the LSTM's layers in recurrence.lstm_sequence instead of nn.LSTM's
        self.init_weights()

    @contextmanager
    def lstm_kernel(self, kernel):
        """An LSTM's layers run in our recurrence (recurrence.lstm_layers) for the body when kernel
        is "own", else in nn.LSTM (oneDNN on CPU, cuDNN on CUDA), as they always do outside such a
        body. Dynamic evaluation asks for "own", measured the faster at batch 1 with gradients
        (docs/speed.md). A GRU or vanilla RNN has one kernel."""
        check_lstm_kernel(kernel)
        saved = self.own_kernel
        self.own_kernel = kernel == "own" and self.cfg.model == "lstm"
        try:
            yield
        finally:
            self.own_kernel = saved

    def init_weights(self, initrange=0.1):
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        if not self.cfg.tied:
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def features(self, tokens, hidden, tied=None):
        """tokens (seq_len, batch); hidden as init_hidden makes it; tied: see
        head.LanguageModel._tied_gradient."""
        emb = self.drop(embed(tokens, self.encoder.weight, tied))  # (seq_len, batch, emsize)
        if self.own_kernel:
            out, hidden = lstm_layers(emb, hidden, self.rnn.all_weights, self.rnn.dropout, self.training)
        else:
            out, hidden = self.rnn(emb, hidden)  # (seq_len, batch, nhid)
        dropped = self.drop(out)
        return LMOutput(None, hidden, out, dropped)

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
