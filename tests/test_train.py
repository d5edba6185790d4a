import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import evaluate
import train
from data import batchify, load_corpus
from helpers import AWD_TINY, ROOT, TINY, assert_same_weights, metrics, weights
from lm import checkpoint, config, scoring, training, trainrun


def test_checkpoint_round_trip_gives_identical_perplexity(trained_run):
    run, folder = trained_run
    model, ckpt = checkpoint.load_model(run)
    best = min(metrics(run), key=lambda r: r["val_loss"])
    assert ckpt["state"]["epoch"] == best["epoch"]
    val = batchify(load_corpus(str(folder)).valid, ckpt["train_config"]["eval_batch_size"])
    assert scoring.evaluate(model, val).loss == best["val_loss"]


def test_checkpoint_holds_only_plain_data_and_loads_weights_only(trained_run):
    run, _ = trained_run
    for name in ("model.pt", "last.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        assert {"model", "model_config", "optimizer", "train_config", "state", "vocab", "rng"} <= ckpt.keys()
        assert ckpt["model_config"]["vocab_size"] == len(ckpt["vocab"])


def test_evaluate_cli_reports_test_perplexity_as_json(trained_run, tmp_path, capsys):
    run, _ = trained_run
    out = tmp_path / "test.json"
    assert evaluate.main([str(run), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "test" and result["batch_size"] == 1
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))
    assert f"ppl {result['ppl']:.2f}" in capsys.readouterr().out
    assert evaluate.main([str(run), "--split", "valid"]) == 0


def test_resume_after_epoch_one_matches_an_uninterrupted_run(corpus_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--data", str(corpus_dir), *TINY, "--dropout", "0.3", "--anneal", "2"]
    assert train.main([*common, "--save", str(straight), "--epochs", "3"]) == 0
    assert train.main([*common, "--save", str(split), "--epochs", "1"]) == 0
    assert train.main(["--resume", str(split), "--epochs", "3"]) == 0
    assert metrics(split) == metrics(straight)
    assert_same_weights(weights(split), weights(straight))
    assert_same_weights(weights(split, "model.pt"), weights(straight, "model.pt"))


def test_adam_runs_fused_and_resumes_fused_from_a_run_saved_without_it(corpus_dir, tmp_path):
    run = tmp_path / "run"
    assert train.main(["--data", str(corpus_dir), *TINY, "--optimizer", "adam", "--lr", "0.01", "--epochs", "1",
                       "--save", str(run)]) == 0
    cfg, ckpt, mode = config.resolve_config(["--resume", str(run), "--epochs", "2"])
    assert [g["fused"] for g in ckpt["optimizer"]["param_groups"]] == [True]
    ckpt["optimizer"]["param_groups"][0]["fused"] = None  # as saved before the optimizer was fused
    assert [g["fused"] for g in trainrun.Run(cfg, ckpt, mode).optimizer.param_groups] == [True]


def test_ctrl_c_mid_epoch_saves_and_resume_continues_exactly(corpus_dir, tmp_path, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    common = ["--data", str(corpus_dir), *TINY, "--dropout", "0.3", "--epochs", "2"]
    assert train.main([*common, "--save", str(straight)]) == 0

    real_step, calls = training.train_step, []

    def step_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 7:  # a Ctrl-C arrives during the 7th batch of epoch 1
            signal.raise_signal(signal.SIGINT)
        return real_step(*args)

    monkeypatch.setattr(training, "train_step", step_then_ctrl_c)
    assert train.main([*common, "--save", str(stopped)]) == 130
    saved = torch.load(stopped / "last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 0 and saved["state"]["batches"] == 7
    assert saved["hidden"] is not None
    monkeypatch.setattr(training, "train_step", real_step)
    assert train.main(["--resume", str(stopped)]) == 0
    assert metrics(stopped) == metrics(straight)
    assert_same_weights(weights(stopped), weights(straight))


def test_lr_is_annealed_when_validation_stops_improving(corpus_dir, tmp_path):
    run = tmp_path / "run"
    # So large an lr that validation gets worse in some epochs.
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "5", *TINY,
                       "--lr", "60", "--anneal", "4"]) == 0
    rows, best, annealed = metrics(run), math.inf, 0
    for row, following in itertools.pairwise(rows):
        improved = row["val_loss"] < best
        best = min(best, row["val_loss"])
        assert following["lr"] == (row["lr"] if improved else row["lr"] / 4)
        annealed += not improved
    assert annealed > 0


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"epoch": 1}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device; the previous last.pt is untouched"):
        checkpoint.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_nan_loss_stops_the_run_with_advice(corpus_dir, tmp_path, monkeypatch, capsys):
    real_step = training.train_step

    def nan_step(*args, **kw):
        step = real_step(*args, **kw)
        return step._replace(ce=step.ce * float("nan"))

    monkeypatch.setattr(training, "train_step", nan_step)
    assert train.main(["--data", str(corpus_dir), "--save", str(tmp_path / "run"), "--epochs", "1", *TINY]) == 2
    assert "training loss is nan" in capsys.readouterr().err


def checkpoint_mid_epoch(run):
    """last.pt's state if it was written in the middle of an epoch, else None."""
    try:
        state = torch.load(run / "last.pt", weights_only=True)["state"]
    except (OSError, RuntimeError, EOFError):  # not there yet
        return None
    return state if state["position"] > 0 else None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_killed_after_a_periodic_checkpoint_resumes_to_the_same_result(corpus_dir, tmp_path, sig):
    """A run in its own process writes last.pt mid-epoch (--checkpoint-every), is killed there,
    and is resumed: it ends with the metrics and weights of a run that was never stopped."""
    common = ["--data", str(corpus_dir), *AWD_TINY, "--epochs", "2", "--checkpoint-every", "1e-9"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train.main([*common, "--save", str(straight)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as this process runs
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *common, "--save", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while checkpoint_mid_epoch(killed) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), err
    saved = checkpoint_mid_epoch(killed)
    assert saved is not None and saved["epoch"] < 2, "the run was not stopped in the middle of an epoch"
    assert train.main(["--resume", str(killed)]) == 0
    assert metrics(killed) == metrics(straight)
    for name in ("last.pt", "model.pt"):
        assert_same_weights(weights(killed, name), weights(straight, name))


@pytest.mark.parametrize("case, message", [
    ("newer format", "has checkpoint format 2, newer than this code reads (1)"),
    ("not a checkpoint", "is not a checkpoint written by train.py"),
    ("truncated", "cannot read checkpoint"),
])
def test_unusable_checkpoints_are_one_line_errors(trained_run, tmp_path, case, message, capsys):
    run, _ = trained_run
    path = tmp_path / "model.pt"
    ckpt = torch.load(run / "model.pt", weights_only=True)
    if case == "newer format":
        torch.save({**ckpt, "format": 2}, path)
    elif case == "not a checkpoint":
        torch.save({"weights": ckpt["model"]}, path)
    else:
        path.write_bytes((run / "model.pt").read_bytes()[:1000])
    assert evaluate.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
