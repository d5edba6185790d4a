"""The chunked decoder (lm/decoder.py, lm/logits.py) and the model's passes through it
(lm/head.py): the same function as the plain PyTorch code, exactly in fp32 and within tolerance
in bf16."""
import pytest
import torch
import torch.nn.functional as F

import model
from lm import logits
from lm.decoder import (
    TiedGradient,
    Workspace,
    linear_cross_entropy,
    linear_scores,
    log_prob_chunks,
    low_rank_cross_entropy,
    model_scores,
)
from lm.head import detach_hidden
from lm.models import build_model
from lm.precision import autocast
from model import AWDConfig, ModelConfig


def reference_grads(features, weight, bias, targets, scale):
    f, w, b = (t.detach().float().requires_grad_() for t in (features, weight, bias))
    loss = F.cross_entropy(F.linear(f, w, b), targets)
    (loss * scale).backward()
    return loss.detach(), f.grad, w.grad, b.grad


def fused_grads(features, weight, bias, targets, scale, rows, dtype=torch.float32):
    f = features.detach().to(dtype).requires_grad_()
    w, b = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    loss = linear_cross_entropy(f, w, b, targets, rows=rows)
    (loss * scale).backward()
    return loss.detach(), f.grad.float(), w.grad, b.grad


@pytest.fixture
def decoder_problem():
    torch.manual_seed(0)
    n, d, vocab = 300, 16, 50
    return torch.randn(n, d), torch.randn(vocab, d) * 0.5, torch.randn(vocab) * 0.1, torch.randint(0, vocab, (n,))


# 300 tokens in chunks of 5 (fewer rows than features: the mean's 1/n goes on the softmax's
# gradient), of 128 (two full chunks and a partial one) or in one chunk of 300; the decoder weight
# read through a transposed view (300 rows are fewer than logits.CONTIGUOUS_MIN_ROWS) or, with
# the threshold lowered, from a contiguous transposed copy.
CHUNK_ROWS = [5, 128, 300]


@pytest.fixture(params=["view", "contiguous"])
def weight_layout(request, monkeypatch):
    """The tests that use it run with both layouts of the decoder weight (see logits.decoder_operands)."""
    if request.param == "contiguous":
        monkeypatch.setattr(logits, "CONTIGUOUS_MIN_ROWS", 1)
    return request.param


@pytest.mark.parametrize("block_rows", [logits.BLOCK_ROWS, 16])
@pytest.mark.parametrize("rows", CHUNK_ROWS)
@pytest.mark.usefixtures("weight_layout")
def test_linear_cross_entropy_equals_the_unfused_loss_and_gradients(decoder_problem, rows, block_rows, monkeypatch):
    """block_rows 16: the features' gradient of a few-row chunk sums blocks of the 50-word
    vocabulary (16, 16, 16, 2), as WikiText-2's 33,278 words are summed in dynamic evaluation."""
    monkeypatch.setattr(logits, "BLOCK_ROWS", block_rows)
    ref = reference_grads(*decoder_problem, scale=3.0)  # an upstream gradient of 3
    ours = fused_grads(*decoder_problem, scale=3.0, rows=rows)
    for r, o in zip(ref, ours, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", CHUNK_ROWS)
@pytest.mark.usefixtures("weight_layout")
def test_linear_cross_entropy_in_bf16_is_close(decoder_problem, rows):
    ref = reference_grads(*decoder_problem, scale=1.0)
    ours = fused_grads(*decoder_problem, scale=1.0, rows=rows, dtype=torch.bfloat16)
    assert abs(ours[0] - ref[0]) < 0.02
    for r, o in zip(ref[1:], ours[1:], strict=True):
        assert (o - r).norm() / r.norm() < 0.02
    assert ours[1].dtype == torch.float32 and ours[2].dtype == torch.float32


def test_linear_cross_entropy_in_bf16_keeps_the_gradient_of_confident_targets():
    """With the decoder the identity, the features are the logits and their gradient is
    softmax - onehot per token. Target probabilities from 0.9 to 0.99999: in bf16, p_t rounds to 1
    above about 0.998, and p_t - 1 would be 0. The logits are exact in bf16, so only the softmax's
    precision is tested; autocast's own cross-entropy is off by up to ~4% here."""
    vocab, n = 64, 400
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, vocab, (n,), generator=g)
    logits = torch.randn(n, vocab, generator=g)
    logits[torch.arange(n), targets] += torch.linspace(6, 16, n)
    logits = logits.bfloat16()
    exact = torch.softmax(logits.double(), 1)
    exact_nats = -exact[torch.arange(n), targets].log()
    exact[torch.arange(n), targets] -= 1
    assert (exact[torch.arange(n), targets].abs() < 2e-3).sum() > n / 2  # mostly confident targets
    features = logits.clone().requires_grad_()
    loss = linear_cross_entropy(features, torch.eye(vocab), torch.zeros(vocab), targets, rows=128)
    (loss * n).backward()
    grad = features.grad.double()
    at = (torch.arange(n), targets)
    error = (grad[at] - exact[at]).abs() / exact[at].abs()
    assert error.max() < 0.02
    assert (grad - exact).abs().max() < 4e-3  # every other entry: one bf16 rounding of p
    assert loss.item() == pytest.approx(exact_nats.mean().item(), rel=0.01)


@pytest.mark.usefixtures("weight_layout")
def test_linear_scores_counts_nats_and_correct_predictions(decoder_problem):
    features, weight, bias, targets = decoder_problem
    logits = F.linear(features, weight, bias)
    nats, correct = linear_scores(features, weight, bias, targets, rows=128)
    torch.testing.assert_close(nats.item(), F.cross_entropy(logits, targets, reduction="sum").item(), rtol=1e-6, atol=0)
    assert correct.item() == (logits.argmax(1) == targets).sum().item()
    # bf16 logits, fp32 log-softmax: close to the fp32 value.
    bf_nats, _ = linear_scores(features.bfloat16(), weight, bias, targets, rows=128)
    assert abs(bf_nats.item() - nats.item()) / nats.item() < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [5, 12, 300])
@pytest.mark.usefixtures("weight_layout")
def test_the_low_rank_loss_scores_and_descends_as_the_dense_one_does(decoder_problem, rows, dtype):
    """low_rank_cross_entropy (dynamic evaluation's one pass over the logits) on `rows` tokens:
    its log-probabilities score as linear_scores does, exactly; its loss and the features' and
    bias's gradients are linear_cross_entropy's in one chunk, exactly when the mean's 1/n goes on
    the softmax's gradient in both (fewer rows than features, 5 and 12 of 16), else to rounding;
    its weight gradient, made whole, is the dense one."""
    features, weight, bias, targets = decoder_problem
    features, targets = features[:rows], targets[:rows]
    f = features.to(dtype)
    with autocast("cpu", "bf16" if dtype == torch.bfloat16 else "fp32"):
        expected_scores = linear_scores(f, weight, bias, targets, rows=rows)
        expected = fused_grads(f, weight, bias, targets, 1.0, rows, dtype)
        b, x = bias.clone().requires_grad_(), f.clone().requires_grad_()
        loss, log_probs, weight_grad = low_rank_cross_entropy(x, weight, b, targets)
    log_likelihood, correct = model_scores(log_probs, targets)
    assert ((-log_likelihood.double()).item(), correct.item()) == tuple(t.item() for t in expected_scores)
    loss.backward()
    exact = rows < features.size(1)
    for e, o in zip(expected[:2] + expected[3:], (loss.detach(), x.grad.float(), b.grad), strict=True):
        if exact:
            assert torch.equal(e, o)
        else:
            assert_rounding_close(o, e, dtype)
    assert_rounding_close(weight_grad.dense(torch.full_like(weight, float("nan"))), expected[2], dtype)


def assert_rounding_close(got, expected, dtype):
    """Equal to fp32 rounding, or in bf16 to its rounding (2% of the norm, as elsewhere here)."""
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    else:
        assert (got.float() - expected.float()).norm() <= 0.02 * expected.float().norm()


def test_a_low_rank_weight_gradient_is_scaled_by_the_backward_gradient(decoder_problem):
    """The weight gradient's parts are scaled like autograd's gradients: a loss times 3 gives 3
    times the gradient (a backward gradient of 1 skips the scaling)."""
    features, weight, bias, targets = decoder_problem
    features, targets = features[:5], targets[:5]
    expected = reference_grads(features, weight, bias, targets, scale=3.0)[2]
    x = features.clone().requires_grad_()
    loss, _, weight_grad = low_rank_cross_entropy(x, weight, bias, targets)
    (loss * 3.0).backward()
    torch.testing.assert_close(weight_grad.dense(torch.empty_like(weight)), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.usefixtures("weight_layout")
def test_log_prob_chunks_are_the_log_softmax_of_the_logits(decoder_problem):
    """Chunks of 128 of 300 tokens start where they should and hold log_softmax of the logits,
    and linear_scores is model_scores summed over them."""
    features, weight, bias, targets = decoder_problem
    chunks = [(start, lp.clone()) for start, lp in log_prob_chunks(features, weight, bias, rows=128)]
    assert [start for start, _ in chunks] == [0, 128, 256]
    whole = torch.cat([lp for _, lp in chunks])
    torch.testing.assert_close(whole, torch.log_softmax(F.linear(features, weight, bias), 1), rtol=1e-5, atol=1e-5)
    nats, correct = linear_scores(features, weight, bias, targets, rows=128)
    sums = [model_scores(lp, targets[s:s + lp.size(0)]) for s, lp in chunks]
    assert -sum(s[0].double() for s in sums).item() == pytest.approx(nats.item(), rel=1e-12)
    assert sum(s[1] for s in sums).item() == correct.item()


@pytest.mark.parametrize("cfg", [AWDConfig(vocab_size=40, emsize=8, nhid=12, nlayers=2, tied=True),
                                 AWDConfig(vocab_size=40, emsize=8, nhid=12, nlayers=2, tied=False),
                                 ModelConfig(model="lstm", vocab_size=40, emsize=12, nhid=12, tied=True)])
def test_the_models_gradients_are_each_calls_own_and_equal_autograds(cfg):
    """LanguageModel.gradients, dynamic evaluation's pass: for each of two calls on one
    workspace, the gradients of the window's mean loss with respect to every parameter, in
    parameters() order, equal autograd's through the plain loss; the decoder weight's comes as a
    LowRankGradient that, made whole, is the weight's whole gradient (with a tied lookup's rows),
    and the log-probabilities score as score() does."""
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    params, workspace, hidden = list(net.parameters()), Workspace(), net.init_hidden(1)
    decoder = next(k for k, p in enumerate(params) if p is net.decoder.weight)
    tokens = torch.randint(0, 40, (11, 1), generator=torch.Generator().manual_seed(1))
    for start in (0, 5):
        x, y = tokens[start:start + 5], tokens[start + 1:start + 6]
        loss, out = net.loss(x, y, hidden, Workspace())
        expected = torch.autograd.grad(loss, params)
        nats, correct, _ = net.score(x, y, hidden)
        got = net.gradients(x, y, hidden, workspace)
        low_rank = got.grads[decoder]
        assert (low_rank.ids is not None) == cfg.tied
        whole = low_rank.dense(torch.full_like(params[decoder], float("nan")))
        torch.testing.assert_close(whole, expected[decoder], rtol=1e-5, atol=1e-7)
        for k, (g, e) in enumerate(zip(got.grads, expected, strict=True)):
            if k != decoder:
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
        log_likelihood, hits = model_scores(got.log_probs, y.reshape(-1))
        assert ((-log_likelihood.double()).item(), hits.item()) == (nats.item(), correct.item())
        assert all(p.grad is None for p in params)  # nothing left behind
        hidden = detach_hidden(out.hidden)


def test_accuracy_on_a_hand_made_example():
    # Three tokens, vocab 3; the decoder is the identity, so each feature row is its logits.
    features = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    weight, bias = torch.eye(3), torch.zeros(3)
    nats, correct = linear_scores(features, weight, bias, torch.tensor([0, 1, 1]), rows=2)
    assert correct.item() == 2  # row 0 right, row 1 wrong (predicts 2), row 2 right
    expected = -(torch.log_softmax(features, 1)[[0, 1, 2], [0, 1, 1]]).sum()
    assert nats.item() == pytest.approx(expected.item(), rel=1e-6)


def test_accuracy_breaks_ties_as_argmax_does():
    """Logits with many ties at the maximum (bf16 logits often tie): a token counts as correct
    only when its target is the first maximum of its row, as torch.argmax has it."""
    g = torch.Generator().manual_seed(0)
    vocab, n = 7, 400
    features = torch.randint(0, 3, (n, vocab), generator=g).float()  # each row its own logits
    targets = torch.randint(0, vocab, (n,), generator=g)
    weight, bias = torch.eye(vocab), torch.zeros(vocab)
    first_max, top = features.argmax(1), features.amax(1)
    tied = (features == top[:, None]).sum(1) > 1
    target_on_top = features.gather(1, targets[:, None])[:, 0] == top
    assert (tied & (first_max == targets)).any()  # the target is the first of a tie: correct
    assert (tied & target_on_top & (first_max != targets)).any()  # a later one: not correct
    _, correct = linear_scores(features, weight, bias, targets, rows=64)
    assert correct.item() == (first_max == targets).sum().item()


def test_a_kept_workspace_is_reused_and_gives_the_same_results(decoder_problem):
    workspace = Workspace()
    first = linear_scores(*decoder_problem, rows=128, workspace=workspace)
    pointer = workspace.flat["logits", torch.float32].data_ptr()
    second = linear_scores(*decoder_problem, rows=128, workspace=workspace)
    assert workspace.flat["logits", torch.float32].data_ptr() == pointer
    assert [t.item() for t in first] == [t.item() for t in second]



@pytest.mark.parametrize("cfg", [AWDConfig(vocab_size=40, emsize=8, nhid=12, nlayers=2, tied=True),
                                 AWDConfig(vocab_size=40, emsize=8, nhid=12, nlayers=2, tied=False),
                                 ModelConfig(model="lstm", vocab_size=40, emsize=12, nhid=12, tied=True),
                                 ModelConfig(model="lstm", vocab_size=40, emsize=12, nhid=12, tied=False)])
def test_the_embedding_gradient_is_dense_and_equals_the_dense_lookups(cfg, monkeypatch):
    """A tied embedding's lookup adds its gradient into the decoder's (decoder.TiedGradient); the
    weight must end up with the gradient that autograd gives two plain uses of it, for every
    parameter and a dense one."""
    torch.manual_seed(0)
    net = build_model(cfg).train()
    tokens = torch.randint(0, 40, (6, 3))

    def grads():
        torch.manual_seed(1)  # the same dropout masks in both passes
        net.zero_grad(set_to_none=True)
        loss, _ = net(tokens[:-1], net.init_hidden(3), tokens[1:])
        loss.backward()
        return {n: p.grad for n, p in net.named_parameters()}

    ours = grads()
    monkeypatch.setattr(model, "embed", lambda tokens, weight, tied=None: F.embedding(tokens, weight))
    plain = grads()
    for n, g in ours.items():
        assert g.layout == torch.strided, n
        torch.testing.assert_close(g, plain[n], rtol=1e-6, atol=1e-7)


def test_a_tied_gradient_that_no_lookup_joins_leaves_the_gradient_to_the_decoder(decoder_problem):
    """A features() that ignores the TiedGradient (bench.py's plain model) must not lose the
    decoder's share of the weight's gradient."""
    features, weight, bias, targets = decoder_problem
    expected = fused_grads(features, weight, bias, targets, 1.0, 128)
    w = weight.clone().requires_grad_()
    linear_cross_entropy(features, w, bias, targets, rows=128, tied=TiedGradient()).backward()
    assert torch.equal(w.grad, expected[2])

