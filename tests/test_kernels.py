"""The fast path: the chunked decoder loss, bf16 autocast, cheap masks. These pin that the fast
code computes the same function as the plain one (exactly in fp32, within tolerance in bf16);
how fast it is lives in bench.py and results/, not here."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model
import train
from data import batchify, load_corpus
from helpers import TINY, needs_bf16_cpu
from lm import config, kernels, scoring, trainrun
from lm.kernels import (
    Workspace,
    autocast,
    bf16_is_fast,
    fused_lstm,
    linear_cross_entropy,
    linear_scores,
    lstm_sequence,
)
from model import AWDConfig, ModelConfig, WeightDropLSTM, build_model, detach_hidden, dropout_mask

AWD_SMALL = ["--model", "awd-lstm", "--emsize", "16", "--nhid", "32", "--nlayers", "2", "--batch-size", "8",
             "--bptt", "10", "--device", "cpu", "--dtype", "fp32", "--max-batches", "5"]


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
# read through a transposed view (300 rows are fewer than kernels.CONTIGUOUS_MIN_ROWS) or, with
# the threshold lowered, from a contiguous transposed copy.
CHUNK_ROWS = [5, 128, 300]


@pytest.fixture(params=["view", "contiguous"])
def weight_layout(request, monkeypatch):
    """The tests that use it run with both layouts of the decoder weight (see kernels._decoder_operands)."""
    if request.param == "contiguous":
        monkeypatch.setattr(kernels, "CONTIGUOUS_MIN_ROWS", 1)
    return request.param


@pytest.mark.parametrize("block_rows", [kernels.BLOCK_ROWS, 16])
@pytest.mark.parametrize("rows", CHUNK_ROWS)
@pytest.mark.usefixtures("weight_layout")
def test_linear_cross_entropy_equals_the_unfused_loss_and_gradients(decoder_problem, rows, block_rows, monkeypatch):
    """block_rows 16: the features' gradient of a few-row chunk sums blocks of the 50-word
    vocabulary (16, 16, 16, 2), as WikiText-2's 33,278 words are summed in dynamic evaluation."""
    monkeypatch.setattr(kernels, "BLOCK_ROWS", block_rows)
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
@pytest.mark.parametrize("rows", CHUNK_ROWS)
@pytest.mark.usefixtures("weight_layout")
def test_the_scored_loss_scores_as_linear_scores_does(decoder_problem, rows, dtype):
    """score=True (dynamic evaluation's one pass over the logits) gives linear_scores' nats and
    correct predictions exactly, and linear_cross_entropy's loss and gradients exactly."""
    features, weight, bias, targets = decoder_problem
    f = features.to(dtype)
    with autocast("cpu", "bf16" if dtype == torch.bfloat16 else "fp32"):
        expected_scores = linear_scores(f, weight, bias, targets, rows=rows)
        expected = fused_grads(f, weight, bias, targets, 1.0, rows, dtype)
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        x = f.clone().requires_grad_()
        loss, nats, correct = linear_cross_entropy(x, w, b, targets, rows=rows, score=True)
    loss.backward()
    assert (nats.item(), correct.item()) == tuple(t.item() for t in expected_scores)
    for e, o in zip(expected, (loss.detach(), x.grad.float(), w.grad, b.grad), strict=True):
        assert torch.equal(e, o)


@pytest.mark.parametrize("cfg", [AWDConfig(vocab_size=40, emsize=8, nhid=12, nlayers=2, tied=True),
                                 AWDConfig(vocab_size=40, emsize=8, nhid=12, nlayers=2, tied=False),
                                 ModelConfig(model="lstm", vocab_size=40, emsize=12, nhid=12, tied=True)])
def test_a_factored_weight_gradient_is_each_calls_own_and_equals_the_dense_one(cfg):
    """Workspace(factor_weight_grad=True), dynamic evaluation's: autograd gets no gradient for the
    decoder weight, and the LowRankGradient left in the workspace, made whole, is the weight's
    whole gradient (with a tied lookup's rows), for each of two calls on the same workspace; the
    other parameters' gradients are unchanged. The loss is scaled by 3 (a backward gradient of 1
    skips the scaling)."""
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    params = list(net.parameters())
    decoder = next(k for k, p in enumerate(params) if p is net.decoder.weight)
    workspace, hidden = Workspace(factor_weight_grad=True), net.init_hidden(1)
    tokens = torch.randint(0, 40, (11, 1), generator=torch.Generator().manual_seed(1))
    for start in (0, 5):
        x, y = tokens[start:start + 5], tokens[start + 1:start + 6]
        loss, out = net.loss(x, y, hidden, Workspace())
        expected = torch.autograd.grad(loss * 3.0, params)
        loss, _ = net.loss(x, y, hidden, workspace)
        grads = torch.autograd.grad(loss * 3.0, params, allow_unused=True)
        low_rank = workspace.take_weight_grad()
        assert grads[decoder] is None and low_rank.weight is net.decoder.weight
        assert workspace.take_weight_grad() is None  # handed over once
        assert (low_rank.ids is not None) == cfg.tied
        whole = low_rank.dense(torch.full_like(params[decoder], float("nan")))
        torch.testing.assert_close(whole, expected[decoder], rtol=1e-5, atol=1e-7)
        for k, (g, e) in enumerate(zip(grads, expected, strict=True)):
            if k != decoder:
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
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


def test_dropout_mask_values_and_rate():
    torch.manual_seed(0)
    mask = dropout_mask((400, 500), 0.3, "cpu")
    values = mask.unique().tolist()
    assert values[0] == 0 and values[1] == pytest.approx(1 / 0.7) and len(values) == 2
    assert abs((mask == 0).float().mean().item() - 0.3) < 0.01


@pytest.mark.parametrize("cfg", [
    pytest.param(ModelConfig(vocab_size=40, model="lstm", emsize=32, nhid=32, nlayers=2), marks=needs_bf16_cpu),
    ModelConfig(vocab_size=40, model="gru", emsize=32, nhid=32, nlayers=2),
    pytest.param(AWDConfig(vocab_size=40, emsize=16, nhid=32, nlayers=2), marks=needs_bf16_cpu)],
    ids=["lstm", "gru", "awd-lstm"])
def test_bf16_autocast_computes_the_same_function(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tokens = torch.randint(0, 40, (30, 4))
    losses = {}
    for dtype in ("fp32", "bf16"):
        with torch.no_grad(), autocast("cpu", dtype):
            out = model(tokens[:-1], model.init_hidden(4))
        losses[dtype] = F.cross_entropy(out.logits.float().flatten(0, 1), tokens[1:].flatten())
    assert abs(losses["bf16"] - losses["fp32"]) < 0.01


def test_evaluation_does_not_depend_on_the_window(corpus_dir, tmp_path):
    torch.manual_seed(0)
    corpus = load_corpus(str(corpus_dir))
    model = build_model(AWDConfig(vocab_size=len(corpus.itos), emsize=16, nhid=32, nlayers=2))
    source = batchify(corpus.valid, 1, "cpu")
    short, long = (scoring.evaluate(model, source, window=window) for window in (7, 500))
    assert short.loss == pytest.approx(long.loss, rel=1e-5)
    assert short.accuracy == long.accuracy


def test_detach_hidden_keeps_states_in_fp32():
    state = (torch.ones(1, 2, 3, dtype=torch.bfloat16, requires_grad=True),) * 2
    assert all(h.dtype == torch.float32 and not h.requires_grad for h in detach_hidden(state))


def test_default_dtype_follows_the_hardware():
    assert config.default_dtype("cpu") == ("bf16" if bf16_is_fast("cpu") else "fp32")
    cfg, _, _ = config.resolve_config(["--device", "cpu"])
    assert cfg["dtype"] == config.default_dtype("cpu")


@needs_bf16_cpu
def test_a_bf16_run_learns_and_may_resume_in_fp32(corpus_dir, tmp_path):
    run = tmp_path / "run"
    flags = [f if f != "fp32" else "bf16" for f in TINY]
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "3", *flags]) == 0
    assert train.main(["--resume", str(run), "--epochs", "4", "--dtype", "fp32"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["val_ppl"] < len(load_corpus(str(corpus_dir)).itos) / 4
    assert 0 < rows[-1]["val_accuracy"] <= 1


# --- our LSTM recurrence (lstm_sequence, WeightDropLSTM kernel "own") --------------------------

def lstm_problem(steps=6, batch=3, inputs=4, hidden=5, dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(steps, batch, inputs, dtype=dtype)
    state = tuple(torch.randn(1, batch, hidden, dtype=dtype) * 0.5 for _ in range(2))
    weights = [torch.randn(4 * hidden, inputs, dtype=dtype) * 0.5, torch.randn(4 * hidden, hidden, dtype=dtype) * 0.5,
               torch.randn(4 * hidden, dtype=dtype) * 0.1, torch.randn(4 * hidden, dtype=dtype) * 0.1]
    return x, state, weights


def test_lstm_sequence_backward_passes_gradcheck():
    """The hand-written backward against finite differences in fp64, through the outputs and the
    final (h, c), for every input including the initial state."""
    x, (h0, c0), weights = lstm_problem()
    inputs = [t.requires_grad_() for t in (x, h0, c0, *weights)]

    def f(x, h0, c0, *weights):
        out, (h, c) = lstm_sequence(x, (h0, c0), *weights)
        return out, h, c

    assert torch.autograd.gradcheck(f, inputs)


def test_lstm_sequence_equals_torch_lstm_and_its_gradients():
    x, state, weights = lstm_problem(steps=9, dtype=torch.float32)
    grads, results = [], []
    for run in (lstm_sequence, fused_lstm):
        leaves = [t.detach().clone().requires_grad_() for t in (x, *weights)]
        out, (h, c) = run(leaves[0], state, *leaves[1:])
        (out.pow(2).sum() + h.sum() + c.pow(2).sum()).backward()
        results.append((out, h, c))
        grads.append([t.grad for t in leaves])
    for ours, theirs in zip(results[0] + tuple(grads[0]), results[1] + tuple(grads[1]), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@needs_bf16_cpu
def test_own_kernel_in_bf16_is_close_to_the_fused_one():
    torch.manual_seed(0)
    fused = WeightDropLSTM(16, 24, kernel="fused").train()
    own = WeightDropLSTM(16, 24, kernel="own").train()
    own.load_state_dict(fused.state_dict())
    x = torch.randn(20, 8, 16)
    state = (torch.zeros(1, 8, 24), torch.zeros(1, 8, 24))
    outs = []
    for layer in (fused, own):
        with autocast("cpu", "bf16"):
            out, _ = layer(x, state)
        out.float().pow(2).sum().backward()
        outs.append(out.float())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=3e-2)
    for a, b in zip(fused.parameters(), own.parameters(), strict=True):
        assert (a.grad - b.grad).norm() < 0.03 * a.grad.norm()


def test_weight_drop_under_the_own_kernel_uses_one_mask_for_all_steps(monkeypatch):
    calls, real = [], kernels._LSTMSequence.apply

    def spy(x, h0, c0, w_ih, w_hh, bias):
        calls.append(w_hh.detach().clone())
        return real(x, h0, c0, w_ih, w_hh, bias)

    monkeypatch.setattr(kernels._LSTMSequence, "apply", spy)
    torch.manual_seed(0)
    layer = WeightDropLSTM(5, 7, weight_drop=0.5, kernel="own").train()
    x = torch.randn(12, 3, 5)
    out, _ = layer(x, (torch.zeros(1, 3, 7), torch.zeros(1, 3, 7)))
    (w_hh,) = calls
    dropped = w_hh == 0
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(w_hh[~dropped], 2 * layer.weight_hh.detach()[~dropped])
    ref, _ = fused_lstm(x, (torch.zeros(1, 3, 7), torch.zeros(1, 3, 7)),
                        layer.weight_ih, w_hh, layer.bias_ih, layer.bias_hh)
    torch.testing.assert_close(out, ref)  # the same dropped matrix at every step
    out.sum().backward()
    assert torch.all(layer.weight_hh.grad[dropped] == 0)


@needs_bf16_cpu
def test_auto_kernel_runs_ours_only_for_large_bf16_training_steps_on_cpu(monkeypatch):
    used = []
    real = model.lstm_sequence
    monkeypatch.setattr(model, "lstm_sequence", lambda *a: used.append("own") or real(*a))
    big = WeightDropLSTM(512, 512).train()  # batch 64: 64 * 512 * 1024 = 2**25, the threshold
    small = WeightDropLSTM(16, 32).train()

    def kernel(layer, batch, dtype, grad=True):
        used.clear()
        state = (torch.zeros(1, batch, layer.hidden_size),) * 2
        with torch.set_grad_enabled(grad), autocast("cpu", dtype):
            layer(torch.randn(2, batch, layer.input_size), state)
        return used[0] if used else "fused"

    assert kernel(big, 64, "bf16") == "own"
    assert kernel(big, 63, "bf16") == "fused"  # just under the threshold
    assert kernel(big, 64, "fp32") == "fused"
    assert kernel(big, 64, "bf16", grad=False) == "fused"  # evaluation
    assert kernel(small, 64, "bf16") == "fused"
    for name in ("fused", "own"):
        small.kernel = name
        assert kernel(small, 4, "fp32") == name


def test_lstm_kernel_flag_reaches_the_layers_and_the_checkpoint(corpus_dir, tmp_path):
    run = tmp_path / "run"
    flags = [*AWD_SMALL, "--lstm-kernel", "own"]
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "1", *flags]) == 0
    cfg, ckpt, _ = config.resolve_config(["--resume", str(run)])
    assert cfg["lstm_kernel"] == ckpt["train_config"]["lstm_kernel"] == "own"
    net = trainrun.Run(cfg, ckpt, "resume").model
    assert {r.kernel for r in net.rnns} == {"own"}
    with pytest.raises(config.ConfigError, match="awd-lstm only"):
        config.resolve_config(["--model", "lstm", "--lstm-kernel", "own"])


@pytest.mark.parametrize("cfg", [AWDConfig(vocab_size=40, emsize=8, nhid=12, nlayers=2, tied=True),
                                 AWDConfig(vocab_size=40, emsize=8, nhid=12, nlayers=2, tied=False),
                                 ModelConfig(model="lstm", vocab_size=40, emsize=12, nhid=12, tied=True),
                                 ModelConfig(model="lstm", vocab_size=40, emsize=12, nhid=12, tied=False)])
def test_the_embedding_gradient_is_dense_and_equals_the_dense_lookups(cfg, monkeypatch):
    """A tied embedding's lookup adds its gradient into the decoder's (kernels.TiedGradient); the
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
    linear_cross_entropy(features, w, bias, targets, rows=128, tied=kernels.TiedGradient()).backward()
    assert torch.equal(w.grad, expected[2])


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from /proc")
def test_keep_freed_memory_keeps_a_large_freed_block_resident():
    """With glibc's defaults a freed 256 MB block is unmapped at once (the resident size drops);
    after keep_freed_memory it stays in the heap for the next allocation."""
    mallopt = kernels.glibc_mallopt()
    if mallopt is None:
        pytest.skip("not glibc")

    def resident_mb():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def drop_after_free():
        block = torch.ones(64 << 20)  # 256 MB, touched
        before = resident_mb()
        del block
        return before - resident_mb()

    mallopt(kernels.M_MMAP_MAX, 65536)  # glibc's defaults, whatever ran before in this process
    mallopt(kernels.M_TRIM_THRESHOLD, 128 * 1024)
    assert drop_after_free() > 200
    assert kernels.keep_freed_memory()
    drop_after_free()  # the first block after the switch comes from a heap that now grows
    assert drop_after_free() < 50
