"""What resumed and continued runs rely on beyond the fault matrix: the clock-based
--checkpoint-every and the fault tests' batch count, a resume with Adam and AdamW, metrics.jsonl
after a kill between its line and last.pt, and continued dynamic-evaluation passes."""
import json
import os
import signal
import types

import pytest
import torch

import train
from helpers import TINY, assert_same_weights, metrics, weights
from lm import faults, training, trainrun


def record_saves(monkeypatch):
    """Each mid-epoch last.pt that trainrun.Run.save writes from now on, as (epoch, batches)."""
    saves, real_save = [], trainrun.Run.save

    def save(run, name):
        if name == "last.pt" and run.state.batches > 0:
            saves.append((run.state.epoch, run.state.batches))
        real_save(run, name)

    monkeypatch.setattr(trainrun.Run, "save", save)
    return saves


def test_checkpoint_every_writes_last_pt_when_its_minutes_have_passed(corpus_dir, tmp_path, monkeypatch):
    """A fake clock that moves 20 s per training step: with --checkpoint-every 1 (minute) a
    mid-epoch last.pt follows batches 3 and 6, and none follows without the flag."""
    clock = [0.0]
    for module in (train, trainrun):
        monkeypatch.setattr(module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    real_step = training.train_step

    def step(*args, **kw):
        clock[0] += 20.0
        return real_step(*args, **kw)

    monkeypatch.setattr(training, "train_step", step)
    saves = record_saves(monkeypatch)
    common = ["--data", str(corpus_dir), *TINY, "--epochs", "1", "--max-batches", "7"]
    assert train.main([*common, "--checkpoint-every", "1", "--save", str(tmp_path / "every")]) == 0
    assert saves == [(0, 3), (0, 6)]
    saves.clear()
    assert train.main([*common, "--save", str(tmp_path / "never")]) == 0
    assert saves == []
    assert metrics(tmp_path / "every") == metrics(tmp_path / "never")


def test_the_fault_tests_batch_count_writes_last_pt_after_every_nth_batch(corpus_dir, tmp_path, monkeypatch):
    """faults.py's LM_CHECKPOINT_BATCHES=3, which the fault matrix runs under: a mid-epoch
    last.pt after batches 3 and 6 of each epoch, whatever the clock says."""
    monkeypatch.setattr(faults, "checkpoint_due", faults.make_batch_trigger("3"))
    saves = record_saves(monkeypatch)
    assert train.main(["--data", str(corpus_dir), *TINY, "--epochs", "2", "--max-batches", "7",
                       "--save", str(tmp_path / "run")]) == 0
    assert saves == [(0, 3), (0, 6), (1, 3), (1, 6)]


def optimizer_state(run):
    """The optimizer's per-parameter state in last.pt (Adam's moments and step counts)."""
    return torch.load(run / "last.pt", weights_only=True)["optimizer"]["state"]


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_a_resumed_adam_run_equals_one_never_stopped(corpus_dir, tmp_path, optimizer):
    """Stopped after epoch 1 and resumed for epoch 2: the metrics, weights and Adam's moments and
    step count of one run of 2 epochs, bit for bit."""
    common = ["--data", str(corpus_dir), *TINY, "--optimizer", optimizer, "--lr", "0.01", "--max-batches", "6"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main([*common, "--epochs", "2", "--save", str(straight)]) == 0
    assert train.main([*common, "--epochs", "1", "--save", str(resumed)]) == 0
    assert train.main(["--resume", str(resumed), "--epochs", "2"]) == 0
    assert metrics(resumed) == metrics(straight)
    assert_same_weights(weights(resumed), weights(straight))
    a, b = optimizer_state(resumed), optimizer_state(straight)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert a[k].keys() == b[k].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(a[k][n], b[k][n]) for n in a[k]), k
    assert int(a[0]["step"]) == 12


def test_a_kill_between_the_metrics_line_and_last_pt_logs_each_epoch_once(corpus_dir, tmp_path):
    """Epoch 2's line is in metrics.jsonl but last.pt is still epoch 1's (a kill between the two
    writes, put back by hand): the resume runs epoch 2 again and logs it once, as a run never
    stopped does."""
    common = ["--data", str(corpus_dir), *TINY, "--max-batches", "4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train.main([*common, "--epochs", "2", "--save", str(straight)]) == 0
    assert train.main([*common, "--epochs", "1", "--save", str(killed)]) == 0
    after_epoch_1 = (killed / "last.pt").read_bytes()
    assert train.main(["--resume", str(killed), "--epochs", "2"]) == 0
    (killed / "last.pt").write_bytes(after_epoch_1)
    assert [r["epoch"] for r in metrics(killed)] == [1, 2]
    assert train.main(["--resume", str(killed), "--epochs", "2"]) == 0
    assert metrics(killed) == metrics(straight)


DYNAMIC = ["--split", "valid", "--dynamic-eval", "--dyn-lr", "1e-3", "--dyn-stat-batches", "3"]
CACHE = ["--cache", "--cache-window", "20", "--cache-theta", "0.5", "--cache-lambda", "0.2"]


def stop_after(monkeypatch, n):
    """Ctrl-C (SIGINT to this process) once dynamic evaluation has finished its n-th segment."""
    done = []

    def point(name):
        if name == "adapting":
            done.append(name)
            if len(done) == n:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(faults, "point", point)


@pytest.mark.parametrize("gaps", [False, True], ids=["no-cache", "cache-original-gaps"])
def test_a_continued_dynamic_evaluation_pass_gives_the_numbers_of_one_never_stopped(trained_run, tmp_path,
                                                                                    monkeypatch, gaps):
    """evaluate.py --dyn-checkpoint, stopped by Ctrl-C after the 4th segment (saved after the
    5th) and run again: the numbers of a pass never stopped, without the cache and with the
    original pointer's gaps, which depend on each position's place in the split (no cache for
    its first 20 targets here; tests/test_dyneval.py covers the plain cache). The gaps are known
    for the published corpora only, so the run's corpus is scored under the name ptb."""
    import shutil

    import evaluate
    run, data = trained_run
    flags = []
    if gaps:
        shutil.copytree(data, tmp_path / "ptb")
        flags = [*CACHE, "--cache-original-gaps", "--data", str(tmp_path / "ptb")]
    whole, part, kept = tmp_path / "whole.json", tmp_path / "part.json", tmp_path / "pass.pt"
    assert evaluate.main([str(run), *DYNAMIC, *flags, "--json", str(whole)]) == 0
    stop_after(monkeypatch, 4)
    assert evaluate.main([str(run), *DYNAMIC, *flags, "--json", str(part), "--dyn-checkpoint", str(kept)]) == 130
    monkeypatch.undo()
    assert torch.load(kept, weights_only=True)["segment"] == 5
    assert evaluate.main([str(run), *DYNAMIC, *flags, "--json", str(part), "--dyn-checkpoint", str(kept)]) == 0
    a, b = (json.loads(p.read_text()) for p in (whole, part))
    assert (a["loss"], a["accuracy"], a.get("without_cache")) == (b["loss"], b["accuracy"], b.get("without_cache"))
    assert b["dynamic_eval"]["continued_from_segment"] == 5
    assert not gaps or a["loss"] != a["without_cache"]["loss"]  # the cache took part


def test_a_kept_pass_is_not_continued_with_other_cache_gaps(trained_run, tmp_path, monkeypatch, capsys):
    """A pass stopped with --cache is refused, and left as it was, when the command run again
    adds --cache-original-gaps: its cache saw other positions."""
    import shutil

    import evaluate
    run, data = trained_run
    shutil.copytree(data, tmp_path / "ptb")
    flags = [str(run), *DYNAMIC, *CACHE, "--data", str(tmp_path / "ptb"), "--dyn-checkpoint", str(tmp_path / "p.pt")]
    stop_after(monkeypatch, 2)
    assert evaluate.main(flags) == 130
    monkeypatch.undo()
    saved = (tmp_path / "p.pt").read_bytes()
    capsys.readouterr()
    assert evaluate.main([*flags, "--cache-original-gaps"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert (tmp_path / "p.pt").read_bytes() == saved
