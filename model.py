"""Recurrent language models.

RNNModel is the classic baseline (pytorch/examples word_language_model, Zaremba et al. 2014):
embedding -> dropout -> stacked LSTM/GRU/RNN with dropout between layers -> dropout -> decoder,
with optional weight tying of the decoder to the embedding (Press & Wolf 2017; Inan et al. 2017).
"""
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

RNN_TYPES = ("lstm", "gru", "rnn_tanh", "rnn_relu")


@dataclass
class ModelConfig:
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
        if self.tied and self.nhid != self.emsize:
            raise ValueError(f"--tied needs --nhid equal to --emsize (got nhid {self.nhid}, "
                             f"emsize {self.emsize}): the decoder reuses the embedding matrix")
        if min(self.vocab_size, self.emsize, self.nhid, self.nlayers) < 1:
            raise ValueError("vocab_size, emsize, nhid and nlayers must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d):
        """Rebuild from asdict() output, as stored in a checkpoint."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self):
        return asdict(self)


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

    def forward(self, tokens, hidden):
        """tokens (seq_len, batch) -> logits (seq_len, batch, vocab), new hidden state."""
        emb = self.drop(self.encoder(tokens))  # (seq_len, batch, emsize)
        out, hidden = self.rnn(emb, hidden)  # (seq_len, batch, nhid)
        return self.decoder(self.drop(out)), hidden

    def init_hidden(self, batch_size):
        """Zero state: (h, c) for an LSTM, h otherwise, each (nlayers, batch, nhid)."""
        weight = self.encoder.weight
        shape = (self.cfg.nlayers, batch_size, self.cfg.nhid)
        if self.cfg.model == "lstm":
            return (weight.new_zeros(shape), weight.new_zeros(shape))
        return weight.new_zeros(shape)


def build_model(cfg: ModelConfig):
    return RNNModel(cfg)


def detach_hidden(hidden):
    """Cut the graph between batches (truncated BPTT) while keeping the state's values."""
    if isinstance(hidden, torch.Tensor):
        return hidden.detach()
    return tuple(detach_hidden(h) for h in hidden)
