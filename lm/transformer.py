"""A small decoder-only Transformer language model (Vaswani et al. 2017, "Attention Is All You
Need"; the decoder-only, pre-norm arrangement of GPT-2, Radford et al. 2019), as the attention
baseline beside the recurrent models, and the sliding-window evaluation it needs.

    token embedding + position embedding -> dropout -> nlayers x [x + attn(LN(x)), x + mlp(LN(x))]
    -> LN -> decoder tied to the token embedding

- Causal self-attention through F.scaled_dot_product_attention with an explicit boolean mask
  (causal_mask: position q attends to keys 0..q), so the mask is one tested tensor.
- Pre-norm: LayerNorm before attention and before the MLP, inside the residual branches, and a
  final LayerNorm before the decoder; the residual stream itself is never normalized.
- Dropout (one rate) on the embeddings' sum, on the attention weights and on each residual
  branch's output; all of it off in eval mode.
- Positions are learned embeddings, one per position of the context window. A sinusoid would
  extrapolate past the window in principle, but the model never sees a longer sequence (forward
  refuses one, and sliding_window_scores keeps every window within it), and Vaswani et al.
  (Table 3, row E) found learned and sinusoidal positions nearly identical; learned ones are
  GPT-2's choice. pytorch/examples' Transformer uses sinusoids, post-norm and no tying.
- Context window: cfg.context tokens (default 128). The model has no state between calls: each
  call sees only its own tokens, so `hidden` is the empty tuple and the recurrent models'
  pipeline passes it along unchanged. A text longer than the window is scored with
  sliding_window_scores, which gives every token but the text's first ones nearly the full window.
"""
import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lm.decoder import log_prob_chunks
from lm.head import LanguageModel, LMOutput
from lm.logits import argmax_hits_
from model import ConfigMixin, embed


@dataclass
class TransformerConfig(ConfigMixin):
    vocab_size: int
    model: str = "transformer"
    emsize: int = 256  # the residual stream's width (d_model); the embedding size
    nhead: int = 4  # attention heads, each of emsize / nhead
    nhid: int = 1024  # the MLP's hidden width (pytorch/examples' name for it)
    nlayers: int = 4
    context: int = 128  # the context window: the most tokens one call sees
    dropout: float = 0.2  # on the embeddings, the attention weights and each residual branch
    tied: bool = True  # decoder weight is the token embedding matrix

    def __post_init__(self):
        if self.model != "transformer":
            raise ValueError(f"TransformerConfig is for model 'transformer', not {self.model!r}")
        if min(self.vocab_size, self.emsize, self.nhead, self.nhid, self.nlayers, self.context) < 1:
            raise ValueError("vocab_size, emsize, nhead, nhid, nlayers and context must be positive")
        if self.emsize % self.nhead:
            raise ValueError(f"emsize ({self.emsize}) must be a multiple of nhead ({self.nhead})")
        for f in fields(self):
            if f.name.startswith("dropout") and not 0 <= getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be in [0, 1), got {getattr(self, f.name)}")


def causal_mask(n, device=None):
    """(n, n) boolean, True where query position q may attend to key position k: k <= q."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over (batch, seq_len, d) where each position sees itself and
    the positions before it."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.nhead, self.dropout = cfg.nhead, cfg.dropout
        self.qkv = nn.Linear(cfg.emsize, 3 * cfg.emsize)
        self.proj = nn.Linear(cfg.emsize, cfg.emsize)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.nhead, d // self.nhead).transpose(1, 2)  # (batch, heads, n, d / heads)
                   for t in self.qkv(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(n, x.device),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """A pre-norm Transformer block: x + attn(LN(x)), then x + mlp(LN(x)), each branch's output
    dropped out; the MLP is d -> nhid -> d with a GELU."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm_attn, self.norm_mlp = nn.LayerNorm(cfg.emsize), nn.LayerNorm(cfg.emsize)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.emsize, cfg.nhid), nn.GELU(), nn.Linear(cfg.nhid, cfg.emsize))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm_attn(x)))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class TransformerLM(LanguageModel):
    """The decoder-only Transformer on the recurrent models' interface: features(tokens (seq_len,
    batch), hidden) -> LMOutput, with seq_len <= cfg.context; hidden is () and stays ().
    raw and dropped are both the final LayerNorm's output (no dropout after it)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.emsize)
        self.positions = nn.Embedding(cfg.context, cfg.emsize)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.nlayers))
        self.norm = nn.LayerNorm(cfg.emsize)
        self.decoder = nn.Linear(cfg.emsize, cfg.vocab_size)
        self.init_weights()
        if cfg.tied:
            self.decoder.weight = self.encoder.weight

    def init_weights(self):
        """GPT-2's: normal(0, 0.02) weights and zero biases, the residual branches' last layers
        scaled by 1/sqrt(2 * nlayers) so the stream's variance does not grow with depth."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * self.cfg.nlayers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def features(self, tokens, hidden=(), tied=None):
        """tokens (seq_len, batch); hidden (); tied: see LanguageModel._tied_gradient."""
        n = tokens.size(0)
        if n > self.cfg.context:
            raise ValueError(f"{n} tokens exceed the Transformer's context window of {self.cfg.context}")
        x = embed(tokens.t(), self.encoder.weight, tied) + self.positions.weight[:n]  # (batch, seq_len, d)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).transpose(0, 1)  # (seq_len, batch, d)
        return LMOutput(None, (), x, x)

    def init_hidden(self, batch_size):
        return ()

    @property
    def context_window(self):
        return self.cfg.context


class SlidingScores(NamedTuple):
    nats: torch.Tensor  # (tokens - 1,) float64: -log p of each token from the second on, in text order
    context: torch.Tensor  # (tokens - 1,) int64: how many tokens before it each one was predicted from
    correct: torch.Tensor  # float64 scalar: argmax predictions that hit
    window: int
    stride: int

    def summary(self):
        """One line saying how much context the scored tokens had."""
        first, rest = self.context[:self.window], self.context[self.window:]

        def span(c):
            return f"{c.numel()} from {c.min().item()} to {c.max().item()} tokens of context"

        later = f", the other {span(rest)}" if rest.numel() else ""
        return (f"sliding window of {self.window} tokens, stride {self.stride}: {self.context.numel()} tokens each "
                f"scored once; the text's first {span(first)}{later}")


def window_ends(n_targets, window, stride):
    """The end (exclusive, in targets) of each window: the first covers the first `window`
    targets, each next one `stride` more, the last ends at the text's end."""
    ends = list(range(min(window, n_targets), n_targets, stride))
    return ends + [n_targets]


@torch.no_grad()
def sliding_window_scores(model, tokens, stride, windows_per_call=16):
    """Score a text, tokens (n,) on the model's device, with windows of the model's full context
    (cfg.context tokens) advancing `stride` tokens at a time: the first window scores all its
    targets, each later one only its last `stride` (or fewer at the text's end), so every token
    from the second on is scored exactly once. Target i (predicting tokens[i + 1]) is predicted
    from its window's tokens up to i: the text's first `window` targets from 1..window tokens, every
    later one from at least window - stride + 1 and at most window (stride 1: exactly window).
    Call in eval mode. Returns SlidingScores; its summary() says which context each token had."""
    window = model.cfg.context
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, {window}] (the context window), got {stride}")
    n_targets = tokens.numel() - 1
    ends = torch.tensor(window_ends(n_targets, window, stride), device=tokens.device)
    span = min(window, n_targets)
    news = ends.diff(prepend=ends.new_zeros(1))  # targets each window scores, at its end
    offsets = torch.arange(span, device=tokens.device)
    kept, context, correct = [], [], tokens.new_zeros((), dtype=torch.float64)
    for first in range(0, ends.numel(), windows_per_call):
        end, new = ends[first:first + windows_per_call], news[first:first + windows_per_call]
        index = (end - span)[:, None] + offsets  # (windows, span): each window's input positions
        scored = offsets >= span - new[:, None]  # (windows, span): its last `new` targets
        out = model.features(tokens[index].t(), model.init_hidden(end.numel()))
        feats = out.dropped.transpose(0, 1)[scored]  # (scored targets, d), in text order
        targets = tokens[index + 1][scored]
        for start, log_probs in log_prob_chunks(feats, model.decoder.weight, model.decoder.bias):
            rows = targets[start:start + log_probs.size(0)]
            kept.append(log_probs.gather(1, rows[:, None]).squeeze(1).clone())
            correct += argmax_hits_(log_probs, rows)
        context.append((offsets + 1).expand_as(scored)[scored])
    return SlidingScores(-torch.cat(kept).double(), torch.cat(context), correct, window, stride)

