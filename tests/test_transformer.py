"""The Transformer baseline (lm/transformer.py) against independent computations: the causal mask
and what each position sees, the pre-norm block and a training step against a hand-written
float64 forward, tying, dropout, and the sliding-window evaluation against scoring each token
from its own window."""
import math

import pytest
import torch
import torch.nn.functional as F

from lm.transformer import (
    Block,
    CausalSelfAttention,
    TransformerConfig,
    TransformerLM,
    causal_mask,
    sliding_window_scores,
)


def tiny_cfg(**kw):
    return TransformerConfig(**{"vocab_size": 30, "emsize": 8, "nhead": 2, "nhid": 12, "nlayers": 2, "context": 8,
                                "dropout": 0.0, **kw})


def tiny_model(**kw):
    torch.manual_seed(0)
    return TransformerLM(tiny_cfg(**kw))


# --- an independent forward pass, written out for one sequence at a time ----------------------------

def layer_norm(x, p, name):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]


def linear(x, p, name):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def attention(x, p, name, nhead):
    """x (n, d): head by head, position t a softmax over the keys 0..t."""
    n, d = x.shape
    q, k, v = linear(x, p, name + ".qkv").split(d, dim=1)
    size = d // nhead
    heads = []
    for h in range(nhead):
        s = slice(h * size, (h + 1) * size)
        heads.append(torch.stack([torch.softmax(q[t, s] @ k[:t + 1, s].T / math.sqrt(size), 0) @ v[:t + 1, s]
                                  for t in range(n)]))
    return linear(torch.cat(heads, dim=1), p, name + ".proj")


def block(x, p, name, nhead):
    """Pre-norm: the LayerNorms sit at the start of each residual branch."""
    x = x + attention(layer_norm(x, p, name + ".norm_attn"), p, name + ".attn", nhead)
    hidden = linear(layer_norm(x, p, name + ".norm_mlp"), p, name + ".mlp.0")
    return x + linear(0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))), p, name + ".mlp.2")


def reference_logits(p, tokens, cfg):
    """tokens (seq_len, batch) -> logits (seq_len, batch, vocab), decoding with the embedding matrix."""
    columns = []
    for seq in tokens.t():
        x = p["encoder.weight"][seq] + p["positions.weight"][:seq.numel()]
        for i in range(cfg.nlayers):
            x = block(x, p, f"blocks.{i}", cfg.nhead)
        columns.append(layer_norm(x, p, "norm") @ p["encoder.weight"].T + p["decoder.bias"])
    return torch.stack(columns, dim=1)


# --- causality ------------------------------------------------------------------------------------

def test_the_mask_lets_each_position_see_itself_and_the_earlier_ones_only():
    q, k = torch.arange(6)[:, None], torch.arange(6)[None, :]
    assert torch.equal(causal_mask(6), k <= q)


def test_with_uniform_attention_each_position_averages_itself_and_the_earlier_values():
    """Zero queries and keys make attention uniform over what a position sees, so its output is
    the mean of the visible values: a mask off by one either way changes it (one that hides a
    position from itself leaves position 0 nothing to see)."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(tiny_cfg()).double().eval()
    with torch.no_grad():
        attn.qkv.weight[:16] = 0
        attn.qkv.bias[:16] = 0
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    v = linear(x, dict(attn.named_parameters()), "qkv")[..., 16:]
    means = v.cumsum(1) / torch.arange(1, 8, dtype=torch.float64)[:, None]
    torch.testing.assert_close(attn(x), linear(means, dict(attn.named_parameters()), "proj"))


def test_changing_a_token_changes_no_earlier_position_and_its_own():
    net = tiny_model().eval()
    tokens = torch.randint(0, 30, (8, 2), generator=torch.Generator().manual_seed(1))
    logits = net(tokens, ()).logits
    for t in range(8):
        changed = tokens.clone()
        changed[t] = (changed[t] + 1) % 30
        other = net(changed, ()).logits
        torch.testing.assert_close(other[:t], logits[:t], rtol=0, atol=1e-6)
        assert (other[t] - logits[t]).abs().max() > 1e-3


# --- the block, the model and a training step ------------------------------------------------------

def test_the_pre_norm_block_equals_an_independent_computation():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    b = Block(cfg).double().eval()
    with torch.no_grad():  # LayerNorm's own parameters away from (1, 0), so that misplacing one shows
        for norm in (b.norm_attn, b.norm_mlp):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = 3 * torch.randn(2, 6, 8, dtype=torch.float64)
    p = dict(b.named_parameters())
    expected = torch.stack([block(seq, {f"b.{n}": w for n, w in p.items()}, "b", cfg.nhead) for seq in x])
    torch.testing.assert_close(b(x), expected)


def test_a_training_step_equals_a_hand_written_float64_computation():
    """The loss through the chunked decoder with the tied gradient, and every parameter's
    gradient, against the written-out forward with the embedding matrix as the decoder."""
    net = tiny_model().double().train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 30, (8, 3), generator=g), torch.randint(0, 30, (8, 3), generator=g)
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    ce, out = net(x, net.init_hidden(3), y)
    ce.backward()
    assert out.hidden == ()
    expected = F.cross_entropy(reference_logits(params, x, net.cfg).flatten(0, 1), y.flatten())
    expected.backward()
    assert ce.item() == pytest.approx(expected.item(), rel=1e-6)  # the decoder sums its loss in fp32
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-6, atol=1e-9, msg=name)


def test_the_decoder_is_the_embedding_matrix_unless_untied():
    net = tiny_model()
    assert net.decoder.weight is net.encoder.weight
    assert "decoder.weight" not in dict(net.named_parameters())
    untied = tiny_model(tied=False)
    assert untied.decoder.weight is not untied.encoder.weight


def test_dropout_acts_in_training_only():
    net = tiny_model(dropout=0.5)
    twin = TransformerLM(tiny_cfg())
    twin.load_state_dict(net.state_dict())
    tokens = torch.randint(0, 30, (8, 2), generator=torch.Generator().manual_seed(3))
    eval_logits = net.eval()(tokens, ()).logits
    torch.testing.assert_close(eval_logits, twin.train()(tokens, ()).logits)  # eval mode: as if dropout were 0
    assert not torch.allclose(net.train()(tokens, ()).logits, eval_logits)


def test_a_sequence_longer_than_the_context_window_is_refused():
    with pytest.raises(ValueError, match="context window of 8"):
        tiny_model()(torch.zeros(9, 1, dtype=torch.long), ())


# --- the sliding window -------------------------------------------------------------------------------

def each_token_alone(net, tokens, context):
    """(-log p of each token from the second on, predicted from the `context[i]` tokens before
    it; how many of them were the argmax)."""
    nats, hits = [], 0
    for i in range(tokens.numel() - 1):
        seq = tokens[i + 1 - context[i]:i + 1]
        log_probs = torch.log_softmax(net(seq[:, None], ()).logits[-1, 0].double(), 0)
        nats.append(-log_probs[tokens[i + 1]])
        hits += int(log_probs.argmax() == tokens[i + 1])
    return torch.stack(nats), hits


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_sliding_window_scores_each_token_once_from_its_reported_context(stride):
    net = tiny_model(nlayers=1).eval()
    tokens = torch.randint(0, 30, (40,), generator=torch.Generator().manual_seed(4))
    scores = sliding_window_scores(net, tokens, stride, windows_per_call=4)
    assert scores.nats.shape == scores.context.shape == (39,)  # every target once
    assert torch.equal(scores.context[:8], torch.arange(1, 9))  # the text's first tokens: all there is
    rest = scores.context[8:]
    assert rest.min() >= 8 - stride + 1 and rest.max() == 8
    nats, hits = each_token_alone(net, tokens, scores.context)
    torch.testing.assert_close(scores.nats, nats, rtol=1e-5, atol=1e-5)
    assert scores.correct.item() == hits
    if stride == 1:
        assert torch.all(rest == 8)  # the full window for every later token


def test_sliding_window_summary_says_which_context_the_tokens_had():
    net = tiny_model(nlayers=1).eval()
    scores = sliding_window_scores(net, torch.randint(0, 30, (40,)), stride=3)
    assert scores.summary() == ("sliding window of 8 tokens, stride 3: 39 tokens each scored once; the text's first "
                                "8 from 1 to 8 tokens of context, the other 31 from 6 to 8 tokens of context")
    short = sliding_window_scores(net, torch.randint(0, 30, (5,)), stride=3)
    assert short.nats.shape == (4,) and short.summary().endswith("first 4 from 1 to 4 tokens of context")
    with pytest.raises(ValueError, match="stride"):
        sliding_window_scores(net, torch.randint(0, 30, (40,)), stride=9)
