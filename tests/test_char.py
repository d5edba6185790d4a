"""Character-level modeling: data, metrics, plots and sampling on a text file the tests write."""
import json
import math
import struct

import pytest
import torch

import data
import evaluate
import generate
import plot
from data import DataError, load_corpus, split_text
from experiments import scripts
from helpers import SHARED_DATA, grammar_lines, train_once
from lm import config, defaults, plots, scoring
from lm.checkpoint import load_model, read_metrics
from lm.models import build_model
from model import ModelConfig

CHAR_TINY = ["--level", "char", "--emsize", "16", "--nhid", "32", "--nlayers", "1", "--dropout", "0",
             "--batch-size", "8", "--bptt", "20", "--eval-batch-size", "4", "--device", "cpu",
             "--dtype", "fp32", "--log-interval", "10"]
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


def write_text(path, lines=400):
    path.write_text("".join(line + "\n" for line in grammar_lines(lines, 0)))
    return path


@pytest.fixture(scope="session")
def char_run(tmp_path_factory):
    """A small character LSTM trained once on grammar text, shared by read-only tests."""
    return train_once(tmp_path_factory, "char", lambda base: write_text(base / "play.txt"),
                      ["--epochs", "3", "--plot", *CHAR_TINY])


def test_char_vocabulary_round_trips(tmp_path):
    text = write_text(tmp_path / "play.txt").read_text()
    corpus = load_corpus(str(tmp_path / "play.txt"), level="char")
    assert corpus.itos == sorted(set(text[: int(len(text) * 0.9)]))
    decoded = "".join(corpus.itos[i] for i in torch.cat([corpus.train, corpus.valid, corpus.test]))
    assert decoded == text  # every character, newlines included, in order


def test_split_boundaries_are_90_5_5_and_contiguous():
    text = "".join(chr(65 + i % 26) for i in range(1001))
    s = split_text(text)
    # int(0.9 * 1001) = 900; the remaining 101 are halved as int(50.5) = 50 and 51.
    assert [len(s["train"]), len(s["valid"]), len(s["test"])] == [900, 50, 51]
    assert s["train"] + s["valid"] + s["test"] == text


def test_valid_plus_test_is_the_last_ten_percent(tmp_path):
    text = write_text(tmp_path / "play.txt").read_text()
    corpus = load_corpus(str(tmp_path / "play.txt"), level="char")
    tail = "".join(corpus.itos[i] for i in corpus.split("valid+test"))
    assert tail == text[int(len(text) * 0.9):]


def test_bundled_tiny_shakespeare_splits_match_the_hub():
    corpus = load_corpus("tinyshakespeare", level="char")
    assert [corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()] == [1_003_854, 55_770, 55_770]
    assert len(corpus.itos) == 65
    first_valid = "".join(corpus.itos[i] for i in corpus.valid[:12])
    assert first_valid == data.read_bundled("tinyshakespeare")["all"][1_003_854:1_003_866]
    if SHAKESPEARE.exists():  # the same text as the verified copy
        assert torch.equal(corpus.split("valid+test"), load_corpus(str(SHAKESPEARE), level="char").split("valid+test"))


def test_hub_tiny_shakespeare_matches_the_local_file(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    path = write_text(tmp_path / "play.txt")
    parts = split_text(path.read_text())  # the hub holds each split as one row of text
    fake = datasets.DatasetDict({hub: datasets.Dataset.from_dict({"text": [parts[s]]})
                                 for s, hub in (("train", "train"), ("valid", "validation"), ("test", "test"))})
    monkeypatch.setattr(data, "hub_reachable", lambda host: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config: fake)
    hub, local = load_corpus("hub:tinyshakespeare", level="char"), load_corpus(str(path), level="char")
    assert hub.itos == local.itos and hub.level == "char"
    for split in ("train", "valid", "test"):
        assert torch.equal(hub.split(split), local.split(split))


def test_unseen_character_in_valid_is_a_clear_error(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab" * 450 + "a" * 45 + "Z" + "b" * 54)
    with pytest.raises(DataError, match=r"valid split has 1 character.*'Z'"):
        load_corpus(str(path), level="char")


def test_a_single_file_needs_char_level(tmp_path):
    with pytest.raises(DataError, match="only with --level char"):
        load_corpus(str(write_text(tmp_path / "play.txt")), level="word")


def test_accuracy_and_bits_on_a_hand_made_example():
    # A model that ignores its input: zero decoder weight, so the logits are the bias at every
    # step. It always predicts "a"; the targets are "abaa", so 3 of 4 are right.
    model = build_model(ModelConfig(vocab_size=2, emsize=4, nhid=4, nlayers=1, dropout=0.0))
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_(torch.tensor([1.0, -1.0]))
    source = torch.tensor([0, 0, 1, 0, 0]).view(-1, 1)  # "aabaa": inputs "aaba", targets "abaa"
    scores = scoring.evaluate(model, source)
    log_p = torch.log_softmax(torch.tensor([1.0, -1.0]), 0)
    assert scores.accuracy == 0.75
    assert scores.loss == pytest.approx(-(3 * log_p[0] + log_p[1]).item() / 4, rel=1e-6)
    assert scores.bits == pytest.approx(scores.loss / math.log(2))


def test_char_run_logs_bits_and_accuracy_per_epoch(char_run):
    run, _ = char_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))
        assert 0 < r["val_accuracy"] <= 1
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    # The grammar's characters are far from uniform: a trained model beats log2(vocab) bits.
    assert rows[-1]["val_bpc"] < math.log2(len(load_model(run)[1]["vocab"])) - 1


@pytest.mark.parametrize("split", ["test", "valid+test", "train"])
def test_evaluate_reports_char_metrics_for_any_split(char_run, tmp_path, split):
    run, _ = char_run
    out = tmp_path / "scores.json"
    assert evaluate.main([str(run), "--split", split, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["level"] == "char"
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2))
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))
    assert 0 < result["accuracy"] <= 1


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_train_plot_and_plot_py_write_valid_pngs(char_run, tmp_path):
    run, _ = char_run
    width, height = png_size(run / "curves.png")  # written by train.py --plot
    assert width > 400 and height > 200
    out = tmp_path / "both.png"
    assert plot.main([str(run), str(run), "--labels", "a", "b", "-o", str(out)]) == 0
    assert png_size(out) == (width, height)
    assert plot.main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2  # not a run: an error
    assert plot.main([str(run), "--x", "minutes", "--ppl", "-o", str(tmp_path / "m.png")]) == 0
    assert png_size(tmp_path / "m.png") == (width, height)


def test_minutes_are_the_logged_ones_or_the_summed_epoch_times():
    rows = [{"epoch_seconds": 60.0, "minutes": 1.5}, {"epoch_seconds": 120.0, "minutes": 3.5}]
    assert plots.minutes(rows) == [1.5, 3.5]
    assert plots.minutes([{"epoch_seconds": 60.0}, {"epoch_seconds": 30.0}]) == [1.0, 1.5]


def test_metrics_rows_log_the_cumulative_minutes(char_run):
    run, _ = char_run
    rows = read_metrics(run)
    assert all(b["minutes"] > a["minutes"] > 0 for a, b in zip(rows, rows[1:], strict=False))
    assert rows[-1]["minutes"] >= sum(r["epoch_seconds"] for r in rows) / 60 - 0.01


def chars(run, *args, capsys):
    assert generate.main([str(run), *args]) == 0
    return capsys.readouterr().out


def test_char_sampling_is_reproducible_with_a_seed(char_run, capsys):
    run, _ = char_run
    a = chars(run, "--chars", "80", "--seed", "3", "--prompt", "the ", capsys=capsys)
    b = chars(run, "--chars", "80", "--seed", "3", "--prompt", "the ", capsys=capsys)
    c = chars(run, "--chars", "80", "--seed", "4", "--prompt", "the ", capsys=capsys)
    assert a == b and a != c
    assert a.startswith("the ") and len(a) == len("the ") + 80 + 1  # and print's newline
    for t in ("0.7", "1", "4"):
        assert len(chars(run, "--chars", "50", "--temperature", t, "--seed", "1", capsys=capsys)) == 51


def test_the_drivers_run_a_script_as_a_user_would(char_run, capsys):
    """experiments.scripts.run starts generate.py in a new Python from the current folder, as the
    experiment drivers do (their tests run the scripts' main() in process): same output, same code."""
    run, _ = char_run
    args = ["--chars", "40", "--seed", "2", "--temperature", "0.7", "--prompt", "the "]
    assert scripts.run("generate.py", [run, *args], capture=True) == (0, chars(run, *args, capsys=capsys))


def test_very_low_temperature_gives_the_argmax(char_run):
    run, _ = char_run
    model, ckpt = load_model(run)
    model.eval()
    stoi = {c: i for i, c in enumerate(ckpt["vocab"])}
    seq = [stoi[c] for c in "the cat"]
    expected = []
    for _ in range(30):  # greedy decoding, re-reading the whole sequence each step
        logits = model(torch.tensor(seq + expected).view(-1, 1), model.init_hidden(1)).logits
        expected.append(logits[-1, 0].argmax().item())
    g = torch.Generator().manual_seed(0)
    assert generate.generate(model, seq, 30, temperature=1e-4, generator=g) == expected


def test_prompt_characters_outside_the_vocabulary_are_named(char_run, capsys):
    run, _ = char_run
    assert generate.main([str(run), "--prompt", "the Zebra!", "--chars", "5"]) == 2
    err = capsys.readouterr().err
    assert "'!', 'Z'" in err and "Traceback" not in err


def test_char_defaults_apply_only_at_char_level():
    word, _, _ = config.resolve_config(["--device", "cpu"])
    char, _, _ = config.resolve_config(["--level", "char", "--device", "cpu"])
    awd, _, _ = config.resolve_config(["--level", "char", "--model", "awd-lstm", "--device", "cpu"])
    assert (word["optimizer"], word["data"]) == ("sgd", "wikitext-2")
    assert (char["optimizer"], char["lr"], char["data"], char["bptt"]) == ("adam", 2e-3, "tinyshakespeare", 100)
    assert awd["dropout_embedding"] == 0 and not awd["tied"] and awd["dropout_weight"] == 0.3
    explicit, _, _ = config.resolve_config(["--level", "char", "--bptt", "50", "--device", "cpu"])
    assert explicit["bptt"] == 50


def test_help_states_each_kind_of_runs_default():
    # char awd-lstm has 2 layers although awd-lstm has 3: --help must not imply 3.
    assert config.default_note("nlayers") == (" (default: 2, 3 for awd-lstm, 4 for qrnn and transformer, "
                                              "2 for char awd-lstm and char qrnn)")
    assert config.default_note("emsize") == (" (default: 200, 400 for awd-lstm and qrnn, 256 for transformer, "
                                             "128 for char and char awd-lstm and char qrnn)")
    for kind_family, char in [(None, False), *defaults.KINDS.values()]:
        argv = ["--device", "cpu"] + ["--model", kind_family] * bool(kind_family) + ["--level", "char"] * char
        cfg, _, _ = config.resolve_config(argv)
        assert cfg["nlayers"] == defaults.base_defaults(kind_family or "baseline", char)["nlayers"]
