"""The fast path apart from the decoder (tests/test_decoder.py): our LSTM recurrence
(lm/recurrence.py), bf16 autocast (lm/precision.py), cheap masks and glibc's kept memory
(lm/memory.py). These pin that the fast code computes the same function as the plain one
(exactly in fp32, within tolerance in bf16); how fast it is lives in bench.py and the speed
notes, not here."""
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
from lm import config, memory, recurrence, scoring, trainrun
from lm.head import detach_hidden
from lm.models import build_model
from lm.precision import autocast, bf16_is_fast
from lm.recurrence import fused_lstm, lstm_sequence
from model import AWDConfig, ModelConfig, WeightDropLSTM, dropout_mask

AWD_SMALL = ["--model", "awd-lstm", "--emsize", "16", "--nhid", "32", "--nlayers", "2", "--batch-size", "8",
             "--bptt", "10", "--device", "cpu", "--dtype", "fp32", "--max-batches", "5"]


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
    calls, real = [], recurrence._LSTMSequence.apply

    def spy(x, h0, c0, w_ih, w_hh, bias):
        calls.append(w_hh.detach().clone())
        return real(x, h0, c0, w_ih, w_hh, bias)

    monkeypatch.setattr(recurrence._LSTMSequence, "apply", spy)
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



@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from /proc")
def test_keep_freed_memory_keeps_a_large_freed_block_resident():
    """With glibc's defaults a freed 256 MB block is unmapped at once (the resident size drops);
    after keep_freed_memory it stays in the heap for the next allocation."""
    mallopt = memory.glibc_mallopt()
    if mallopt is None:
        pytest.skip("not glibc")

    def resident_mb():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def drop_after_free():
        block = torch.ones(64 << 20)  # 256 MB, touched
        before = resident_mb()
        del block
        return before - resident_mb()

    mallopt(memory.M_MMAP_MAX, 65536)  # glibc's defaults, whatever ran before in this process
    mallopt(memory.M_TRIM_THRESHOLD, 128 * 1024)
    assert drop_after_free() > 200
    assert memory.keep_freed_memory()
    drop_after_free()  # the first block after the switch comes from a heap that now grows
    assert drop_after_free() < 50
