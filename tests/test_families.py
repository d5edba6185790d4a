"""The QRNN and the Transformer through the scripts: training, an exact resume, evaluation (the
Transformer's by its sliding window, checked against an independent computation; the QRNN's
cache and dynamic evaluation against the plain pass), generation, and the one-line refusals."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import evaluate
import generate
import train
import tune
from data import load_corpus
from helpers import assert_same_weights, metrics, weights, write_corpus
from lm import config, training, trainrun
from lm.checkpoint import load_model
from lm.head import detach_hidden

COMMON = ["--device", "cpu", "--dtype", "fp32", "--log-interval", "10", "--max-batches", "4", "--batch-size", "8"]
QRNN_TINY = ["--model", "qrnn", "--emsize", "16", "--nhid", "24", "--nlayers", "2", "--bptt", "10",
             "--eval-batch-size", "4", *COMMON]
CONTEXT = 12
TRANSFORMER_TINY = ["--model", "transformer", "--emsize", "16", "--nhead", "2", "--nhid", "32", "--nlayers", "2",
                    "--context", str(CONTEXT), "--bptt", str(CONTEXT), "--lr", "3e-3", *COMMON]
FAMILIES = {"qrnn": QRNN_TINY, "transformer": TRANSFORMER_TINY}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """family -> (a run of 2 epochs, the same run trained 1 epoch and resumed to 2, the corpus)."""
    base = tmp_path_factory.mktemp("families")
    mp = pytest.MonkeyPatch()
    mp.setenv("LM_DATA_CACHE", str(base / "cache"))
    torch.set_num_threads(1)
    corpus = write_corpus(base / "corpus")
    out = {}
    for name, flags in FAMILIES.items():
        whole, parts = base / f"{name}-whole", base / f"{name}-parts"
        assert train.main(["--data", str(corpus), "--save", str(whole), "--epochs", "2", *flags]) == 0
        assert train.main(["--data", str(corpus), "--save", str(parts), "--epochs", "1", *flags]) == 0
        assert train.main(["--resume", str(parts), "--epochs", "2"]) == 0
        out[name] = whole, parts, corpus
    mp.undo()
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_a_resumed_run_equals_the_uninterrupted_one(runs, name):
    whole, parts, _ = runs[name]
    assert_same_weights(weights(whole), weights(parts))
    assert metrics(whole) == metrics(parts)
    saved = torch.load(whole / "last.pt", weights_only=True)["model_config"]
    assert saved["model"] == name and (saved.get("context") == CONTEXT) == (name == "transformer")


def reference_sliding(model, tokens, stride):
    """-log p and hits of every token from the second, each from the window of the whole context
    that ends where its stride's targets end: the full logits of plain forward calls, one window
    at a time. Returns (mean nats, accuracy)."""
    n, nats, hits, done = tokens.numel() - 1, [], [], 0
    while done < n:
        end = min(max(CONTEXT, done + stride), n)  # targets [done, end), from inputs [end - span, end)
        start = max(0, end - CONTEXT)
        with torch.no_grad():
            logits = model(tokens[start:end].view(-1, 1), model.init_hidden(1)).logits[:, 0]
        log_probs = F.log_softmax(logits.double(), -1)[done - start:]
        targets = tokens[done + 1:end + 1]
        nats.append(-log_probs.gather(1, targets[:, None])[:, 0])
        hits.append(log_probs.argmax(1) == targets)
        done = end
    return torch.cat(nats).mean().item(), torch.cat(hits).double().mean().item()


@pytest.mark.parametrize("split, stride", [("test", None), ("valid", 5)])
def test_transformer_evaluation_is_the_sliding_window_and_says_so(runs, tmp_path, capsys, monkeypatch, split, stride):
    whole, _, corpus = runs["transformer"]
    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    flags = ["--split", split, "--json", str(tmp_path / "e.json")] + (["--stride", str(stride)] if stride else [])
    assert evaluate.main([str(whole), *flags]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    stride = stride or CONTEXT // 2
    assert f"sliding window {CONTEXT}, stride {stride}" in lines[-2]
    assert lines[-1].startswith(f"sliding window of {CONTEXT} tokens, stride {stride}")
    model, _ = load_model(whole)
    tokens = load_corpus(str(corpus)).split(split)
    loss, accuracy = reference_sliding(model.eval(), tokens, stride)
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["tokens"] == tokens.numel() - 1
    assert result["loss"] == pytest.approx(loss, rel=1e-5) and result["accuracy"] == pytest.approx(accuracy)


def test_transformer_validation_is_the_sliding_window_at_half_the_context(runs):
    whole, _, corpus = runs["transformer"]
    model, _ = load_model(whole, name="last.pt")
    loss, accuracy = reference_sliding(model.eval(), load_corpus(str(corpus)).valid, CONTEXT // 2)
    last = metrics(whole)[-1]
    assert last["val_loss"] == pytest.approx(loss, rel=1e-5) and last["val_accuracy"] == pytest.approx(accuracy)


def test_generation_feeds_the_transformer_the_last_context_tokens(runs, monkeypatch):
    model, _ = load_model(runs["transformer"][0])
    fed, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda x, hidden: fed.append(x[:, 0].tolist()) or forward(x, hidden))
    prompt = list(range(1, 9))
    sampled = generate.generate(model, prompt, 10, generator=torch.Generator().manual_seed(0))
    text = prompt + sampled
    assert fed == [text[max(0, k - CONTEXT):k] for k in range(len(prompt), len(text))]


def json_of(main, argv, path):
    assert main([*map(str, argv), "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_qrnn_cache_and_dynamic_evaluation_run_and_reduce_to_the_plain_pass(runs, tmp_path, monkeypatch):
    whole = runs["qrnn"][0]
    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    plain = json_of(evaluate.main, [whole], tmp_path / "plain.json")
    cache = ["--cache", "--cache-window", "50", "--cache-theta", "0.5"]
    off = json_of(evaluate.main, [whole, *cache, "--cache-lambda", "0"], tmp_path / "off.json")
    on = json_of(evaluate.main, [whole, *cache, "--cache-lambda", "0.3"], tmp_path / "on.json")
    assert off["loss"] == pytest.approx(plain["loss"], rel=1e-6) and on["loss"] != pytest.approx(plain["loss"])
    assert on["without_cache"]["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    dynamic = ["--dynamic-eval", "--dyn-stat-batches", "3", "--dyn-lambda", "0"]
    still = json_of(evaluate.main, [whole, *dynamic, "--dyn-lr", "0"], tmp_path / "still.json")
    moved = json_of(evaluate.main, [whole, *dynamic, "--dyn-lr", "0.5"], tmp_path / "moved.json")
    assert still["loss"] == pytest.approx(plain["loss"], rel=1e-6) and moved["loss"] != pytest.approx(plain["loss"])


def test_the_qrnn_state_carries_from_each_training_batch_to_the_next(runs, tmp_path, monkeypatch):
    cfg, _, _ = config.resolve_config(["--data", str(runs["qrnn"][2]), "--save", str(tmp_path / "run"), *QRNN_TINY])
    run = trainrun.Run(cfg)
    calls, real_loss = [], run.model.loss

    def loss(x, y, hidden, workspace=None):
        ce, out = real_loss(x, y, hidden, workspace)
        calls.append((detach_hidden(hidden), detach_hidden(out.hidden)))
        return ce, out

    monkeypatch.setattr(run.model, "loss", loss)
    training.train_epoch(run, lambda: False)
    assert len(calls) == 4
    for (_, before), (after, _) in zip(calls, calls[1:], strict=False):
        for (c_out, prev_out), (c_in, prev_in) in zip(before, after, strict=True):
            assert torch.equal(c_out, c_in) and torch.equal(prev_out, prev_in)
            assert torch.count_nonzero(c_in) > 0  # each layer's memory, not a fresh zero state


@pytest.mark.parametrize("main, argv, message", [
    (evaluate.main, ["--cache"], "--cache does not apply to a Transformer"),
    (evaluate.main, ["--dynamic-eval"], "--dynamic-eval does not apply to a Transformer"),
    (evaluate.main, ["--batch-size", "4"], "--batch-size does not apply to a Transformer"),
    (evaluate.main, ["--window", "4"], "--window does not apply to a Transformer"),
    (evaluate.main, ["--stride", "13"], "--stride must be in [1, 12]"),
    (tune.main, ["--method", "cache", "--out", "{tmp}/o"], "--method cache does not apply to a Transformer"),
    (tune.main, ["--method", "dynamic", "--out", "{tmp}/o"], "--method dynamic does not apply to a Transformer"),
    (train.main, ["--finetune", "{run}", "--save", "{tmp}/f"], "--finetune is AWD-LSTM's second stage"),
], ids=["cache", "dynamic-eval", "batch-size", "window", "stride", "tune-cache", "tune-dynamic", "finetune"])
def test_what_a_transformer_cannot_do_is_refused_in_one_line(runs, tmp_path, capsys, main, argv, message):
    whole = runs["transformer"][0]
    copy = tmp_path / "run"
    shutil.copytree(whole, copy)
    args = [a.format(tmp=tmp_path, run=copy) for a in argv]
    code = main(args if main is train.main else [str(copy), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("argv, message", [
    (["--model", "transformer", "--context", "12", "--bptt", "13"], "--bptt 13 exceeds the Transformer's --context 12"),
    (["--model", "transformer", "--variable-bptt"], "draws windows of up to 148 tokens"),
    (["--model", "transformer", "--dropout-input", "0.1"], "its one rate is --dropout"),
    (["--model", "transformer", "--eval-batch-size", "4"], "it validates by a sliding window"),
    (["--model", "transformer", "--emsize", "10", "--nhead", "4"], "must be a multiple of nhead"),
    (["--model", "qrnn", "--dropout", "0.1"], "use --dropout-input/-hidden/-output"),
    (["--model", "qrnn", "--nhead", "2"], "--nhead does not apply to --model qrnn"),
    (["--model", "qrnn", "--lstm-kernel", "own"], "--lstm-kernel applies to --model awd-lstm only"),
], ids=["bptt-past-context", "variable-bptt-past-context", "awd-dropout", "eval-batch", "heads", "qrnn-dropout",
        "qrnn-nhead", "qrnn-lstm-kernel"])
def test_family_flags_that_cannot_work_are_refused_in_one_line(runs, tmp_path, capsys, argv, message):
    save = tmp_path / "new"
    assert train.main(["--data", str(runs["qrnn"][2]), "--save", str(save), "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not save.exists()


def test_stride_is_refused_for_a_recurrent_run(runs, capsys):
    assert evaluate.main([str(runs["qrnn"][0]), "--stride", "4"]) == 2
    assert "--stride applies to a Transformer's sliding window" in capsys.readouterr().err
