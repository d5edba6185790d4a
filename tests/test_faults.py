"""The fault matrix: SIGKILL at named points of training, fine-tuning, evaluation and sampling
(faults.py), then resume, and the result must be bitwise the uninterrupted run's.

    python -m pytest tests/test_faults.py -m slow     # the whole matrix (a few minutes)

The default suite runs the points marked fast. The run: a small AWD-LSTM on CPU in fp32, every
regularizer on, a periodic checkpoint after every 3rd batch of an epoch (faults.py's
LM_CHECKPOINT_BATCHES, so that each point falls at the same place on any machine; the
clock-based --checkpoint-every has its own test in tests/test_resume.py), NT-ASGD's trigger at
the end of epoch 4 of 6 (checked by the reference), then fine-tuning for up to 3 epochs. A point
that the run never reaches fails its test.
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import AWD_TINY, ROOT, digests, metrics, write_corpus
from lm.checkpoint import load_checkpoint

RUN = [*AWD_TINY, "--lr", "20", "--max-batches", "20", "--nonmono", "1", "--epochs", "6"]
FINETUNE = ["--epochs", "3"]
BATCHES = 20  # per epoch, so that batch@N falls in epoch N // 20 + 1
CHECKPOINT_BATCHES = "3"  # last.pt after batches 3, 6, ..., 18 of each epoch, then at its end


def run_script(script, args, fault=None, cache=None):
    """Run a script in its own process with the test's environment; returns its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LM_DATA_CACHE": str(cache),
           "LM_CHECKPOINT_BATCHES": CHECKPOINT_BATCHES}
    env.pop("LM_FAULT", None)
    if fault:
        env["LM_FAULT"] = fault
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-2000:]
    return proc.returncode


def train(data, args, cache=None):
    return run_script("train.py", args, cache=cache)


def kill_at(point, script, args, cache):
    """Run the script with LM_FAULT=point; fails, saying so, when it ends without reaching it."""
    code = run_script(script, args, fault=point, cache=cache)
    assert code == -signal.SIGKILL, (f"fault point {point} was never reached: {script} exited with {code} "
                                     "instead of being killed there")


def state(run):
    """Everything that must match: the metrics without wall-clock fields, and every tensor of
    model.pt and last.pt (weights, optimizer, NT-ASGD average)."""
    tensors = {}
    for name in ("model.pt", "last.pt"):
        ckpt = load_checkpoint(run, name)

        def walk(prefix, value, name=name):
            if isinstance(value, torch.Tensor):
                tensors[f"{name}:{prefix}"] = value
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}/{k}", v)
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    walk(f"{prefix}/{i}", v)

        walk("", {k: v for k, v in ckpt.items() if k != "rng"})
    return metrics(run), tensors


def assert_same(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k


def finish(data, run, first_args, cache):
    """Resume a killed run until it completes; a run killed before its first checkpoint starts over."""
    while True:
        readable = (run / "last.pt").exists()
        if readable:
            load_checkpoint(run, "last.pt")  # never left unreadable
        args = ["--resume", str(run)] if readable else first_args
        if train(data, args, cache=cache) == 0:
            return


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    data, cache = write_corpus(base / "corpus"), base / "cache"
    run = base / "reference"
    assert train(data, ["--data", str(data), "--save", str(run), *RUN], cache=cache) == 0
    rows = metrics(run)
    assert [r["averaged"] for r in rows] == [False] * 4 + [True] * 2  # the trigger fired at epoch 4
    assert train(data, ["--finetune", str(run), *FINETUNE], cache=cache) == 0
    return data, cache, run, state(run), state(base / "reference-finetune")


FAST = {"writing@20"}
TRAIN_POINTS = [
    "batch@7",  # epoch 1, between periodic checkpoints
    "batch@53",  # epoch 3
    "writing@20",  # in the middle of writing a checkpoint file
    "writing@700",
    "saved-tmp@2",  # a periodic checkpoint written, not yet renamed
    "saved-tmp@15",
    "validating@2",  # during epoch 2's validation
    "validated@4",  # just before the trigger is applied
    "averaging",  # just after averaging started, before anything is saved
    "batch@87",  # epoch 5, averaging on
    "best-saved@3",  # model.pt written, metrics line and last.pt not
    "logged@3",  # metrics line written, last.pt not
    "logged@6",
]
FINETUNE_POINTS = ["batch@5", "validating@2", "writing@50", "saved-tmp@3", "logged@1"]


def marks(point):
    return () if point in FAST else (pytest.mark.slow,)


@pytest.mark.parametrize("point", [pytest.param(p, marks=marks(p)) for p in TRAIN_POINTS])
def test_killed_training_resumes_to_the_same_result(reference, tmp_path, point):
    data, cache, _, expected, _ = reference
    run = tmp_path / "run"
    args = ["--data", str(data), "--save", str(run), *RUN]
    kill_at(point, "train.py", args, cache)
    if point.startswith("batch@"):  # killed after batch b of its epoch: last.pt is from the last multiple of 3
        b = (int(point.partition("@")[2]) - 1) % BATCHES + 1
        assert load_checkpoint(run, "last.pt")["state"]["batches"] == b - b % int(CHECKPOINT_BATCHES)
    finish(data, run, args, cache)
    assert_same(state(run), expected)


@pytest.mark.slow
@pytest.mark.parametrize("point", FINETUNE_POINTS)
def test_killed_finetuning_resumes_to_the_same_result(reference, tmp_path, point):
    import shutil
    data, cache, ref_run, _, expected = reference
    run = tmp_path / "run"
    shutil.copytree(ref_run, run)
    args = ["--finetune", str(run), *FINETUNE]
    kill_at(point, "train.py", args, cache)
    finish(data, tmp_path / "run-finetune", args, cache)
    assert_same(state(tmp_path / "run-finetune"), expected)


@pytest.mark.parametrize("script, args, point", [
    ("evaluate.py", ["--split", "valid"], "validating"),
    ("generate.py", ["--words", "20"], "sampling@5"),
])
def test_killed_evaluation_or_sampling_changes_no_file(reference, script, args, point):
    data, cache, run, _, _ = reference
    before = digests(run)
    kill_at(point, script, [str(run), *args], cache)
    assert digests(run) == before


def disk_trouble(monkeypatch, kind):
    """Every file that checkpoint.py opens from now on fails to write: a full disk (/dev/full,
    a real ENOSPC from the kernel) or a read-only file system (EROFS; root ignores permission bits,
    so it is raised directly)."""
    import builtins
    import errno

    from lm import checkpoint
    real_open = builtins.open

    def failing_open(path, mode="r", *args, **kw):
        if "r" in mode:
            return real_open(path, mode, *args, **kw)
        if kind == "full":
            return real_open("/dev/full", mode.replace("a", "w"), *args, **kw)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(checkpoint, "open", failing_open, raising=False)


@pytest.mark.parametrize("kind, reason", [("full", "No space left on device"),
                                          ("read-only", "Read-only file system")])
def test_disk_trouble_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, kind, reason):
    import train
    from helpers import TINY
    data, run = write_corpus(tmp_path / "corpus"), tmp_path / "run"
    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    assert train.main(["--data", str(data), "--save", str(run), "--epochs", "1", *TINY]) == 0
    saved = {p.name: p.read_bytes() for p in run.iterdir()}
    disk_trouble(monkeypatch, kind)
    capsys.readouterr()
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write ") and reason in err[-1] and "untouched" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == saved  # no temporary file left, nothing changed
    monkeypatch.undo()
    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 0  # and the run goes on once the disk is fine
