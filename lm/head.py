"""The end of the forward pass that the models share (model.py's AWDLSTM and RNNModel, bench.py's
plain LSTM): a subclass's features() runs the network up to the decoder's input, and
LanguageModel finishes it through the chunked decoder of lm/decoder.py, in the form each user
needs:

- forward: the logits (generation), or with targets the training loss;
- loss: the mean cross-entropy, to take gradients of (training, dynamic evaluation's statistics);
- score: a window's summed nats and correct predictions (plain evaluation);
- log_probs: a window's fp32 log-probabilities, chunk by chunk (the cache's own pass);
- gradients: a window's log-probabilities and the gradient of its mean loss with respect to every
  parameter, the decoder weight's in parts (dynamic evaluation's own pass).

detach_hidden cuts the recurrent state that every pass carries from one window to the next.
"""
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import nn

from lm.decoder import (
    SCORE_ROWS,
    TiedGradient,
    linear_cross_entropy,
    linear_scores,
    log_prob_chunks,
    low_rank_cross_entropy,
)


class LMOutput(NamedTuple):
    logits: torch.Tensor  # (seq_len, batch, vocab); None from features(), which stops before the decoder
    hidden: object  # recurrent state to pass to the next call
    raw: torch.Tensor  # last layer's output, (seq_len, batch, features), before output dropout
    dropped: torch.Tensor  # the same after output dropout (what the decoder sees)


class Gradients(NamedTuple):
    """LanguageModel.gradients' results."""
    log_probs: torch.Tensor  # (tokens, vocab) fp32, the window's rows flattened time-major, in workspace memory
    grads: list  # d mean loss / d parameter, in the order of parameters(); the decoder weight's a LowRankGradient
    out: LMOutput  # features()'s output: the new hidden state and the raw last-layer outputs


class LanguageModel(nn.Module):
    """The end of the forward pass: a subclass defines features(tokens, hidden, tied=None) ->
    LMOutput without logits, init_hidden(batch_size), and encoder and decoder layers."""

    # The most tokens one call may see, for a model without state between calls (the Transformer);
    # None for a recurrent model, which carries its state from call to call over any length.
    context_window = None

    def lstm_kernel(self, kernel):
        """A context in which the LSTM layers run in `kernel` (see model.WeightDropLSTM); here,
        where there are none, nothing changes."""
        return nullcontext()

    def forward(self, tokens, hidden, targets=None, workspace=None):
        """tokens (seq_len, batch) -> LMOutput with the logits (seq_len, batch, vocab); with
        targets (seq_len, batch), loss()'s (mean cross-entropy, LMOutput) instead. Training calls
        it that way, so that DistributedDataParallel, which hooks forward, sees the pass."""
        if targets is not None:
            return self.loss(tokens, targets, hidden, workspace)
        out = self.features(tokens, hidden)
        return out._replace(logits=self.decoder(out.dropped))

    def _tied_gradient(self):
        """A TiedGradient for one pass when the decoder shares the embedding's weight, else None;
        a features() that ignores it leaves the decoder to return the weight's gradient itself."""
        return TiedGradient() if self.decoder.weight is self.encoder.weight else None

    def _decoder_args(self, out, targets):
        return out.dropped.flatten(0, 1), self.decoder.weight, self.decoder.bias, targets.reshape(-1)

    def loss(self, tokens, targets, hidden, workspace=None):
        """(mean cross-entropy of targets (seq_len, batch), LMOutput without logits), through the
        chunked decoder: the (tokens, vocab) logits never exist whole. A Workspace kept by the
        caller saves re-allocating its scratch memory."""
        tied = self._tied_gradient()
        out = self.features(tokens, hidden, tied)
        return linear_cross_entropy(*self._decoder_args(out, targets), workspace=workspace, tied=tied), out

    @torch.no_grad()
    def score(self, tokens, targets, hidden, workspace=None):
        """(summed nats, correct argmax predictions, new hidden state) of one window, without
        gradients; the sums are float64 scalars on the device (no host sync)."""
        out = self.features(tokens, hidden)
        nats, correct = linear_scores(*self._decoder_args(out, targets), workspace=workspace)
        return nats, correct, out.hidden

    def log_probs(self, out, rows=SCORE_ROWS, workspace=None):
        """The decoder's fp32 log-probabilities of features()'s output `out`, without gradients:
        (start, log_probs (rows, vocab)) for each chunk of `rows` of its positions flattened
        time-major (so a multiple of the batch holds whole time steps), from position `start` on.
        Each chunk lives in workspace memory that the next one reuses (see decoder.log_prob_chunks)."""
        return log_prob_chunks(out.dropped.flatten(0, 1), self.decoder.weight, self.decoder.bias, rows=rows,
                               workspace=workspace)

    def gradients(self, tokens, targets, hidden, workspace=None):
        """Gradients(log_probs, grads, out) of one window of a few tokens, computed from one pass
        over its logits: their fp32 log-probabilities, to score the window with, and the gradient
        of its mean cross-entropy with respect to each parameter, where the decoder weight's is a
        decoder.LowRankGradient (with a tied embedding's rows), never made whole. log_probs and
        the gradient's parts live in the workspace: use them before its next call."""
        tied = self._tied_gradient()
        out = self.features(tokens, hidden, tied)
        loss, log_probs, weight_grad = low_rank_cross_entropy(*self._decoder_args(out, targets), workspace=workspace,
                                                              tied=tied)
        params = list(self.parameters())
        with torch.autocast(tokens.device.type, enabled=False):  # backward outside autocast, as PyTorch advises
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [weight_grad if p is self.decoder.weight else g for p, g in zip(params, grads, strict=True)]
        return Gradients(log_probs, grads, out)


def map_hidden(fn, hidden):
    """Apply fn to every tensor of a recurrent state (a tensor, or nested tuples/lists of them)."""
    if isinstance(hidden, torch.Tensor):
        return fn(hidden)
    return tuple(map_hidden(fn, h) for h in hidden)


def detach_hidden(hidden):
    """Cut the graph between batches (truncated BPTT) while keeping the state's values, in fp32
    (LSTMs under bf16 autocast return bf16 states), so that a run may change --dtype."""
    return map_hidden(lambda h: h.detach().float(), hidden)
