"""Issue 30: checkpoints prove they are intact (a digest checked at every load, a fuzz test of
damaged files), metrics.jsonl's torn and unreadable lines, and one writer per run directory
(two real processes)."""
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import evaluate
import generate
import train
import tune
from helpers import TINY, digests, metrics
from lm import checkpoint
from lm.checkpoint import BEST, LAST, LOCK, METRICS, CheckpointError, load_checkpoint
from lm.dyneval import PassFile

FUZZ_CASES = 240  # flips and truncations of model.pt and last.pt, all in-process


def same(a, b):
    """Whether two loaded checkpoints are bitwise the same: every tensor and every plain value."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.view(-1).view(torch.uint8) if a.numel() else a, b.view(-1).view(torch.uint8) if b.numel() else b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and (a == b or a != a and b != b)  # NaN equals NaN here


def damage(raw, rng):
    """A single-byte flip (XOR with a random non-zero byte) or a truncation, at a random place."""
    if rng.random() < 0.7:
        i = rng.randrange(len(raw))
        out = bytearray(raw)
        out[i] ^= rng.randrange(1, 256)
        return bytes(out), f"flip at {i}"
    n = rng.randrange(len(raw))
    return raw[:n], f"truncated to {n}"


def test_damaged_checkpoints_are_refused_in_one_line(trained_run, tmp_path, capsys):
    """Seeded flips and truncations anywhere in model.pt and last.pt: each is refused with one
    line that names the file, or, for a byte that carries nothing, loads bitwise the same."""
    run, _ = trained_run
    rng = random.Random(30)
    originals = {name: ((run / name).read_bytes(), load_checkpoint(run, name)) for name in (BEST, LAST)}
    capsys.readouterr()
    refused = carried_nothing = 0
    for case in range(FUZZ_CASES):
        name = (BEST, LAST)[case % 2]
        raw, expected = originals[name]
        data, how = damage(raw, rng)
        path = tmp_path / name
        path.write_bytes(data)
        try:
            loaded = load_checkpoint(path, name)
        except CheckpointError as e:
            message = str(e)
            assert "\n" not in message and message.startswith(f"cannot read checkpoint {path}: "), (how, message)
            refused += 1
        else:
            assert same(loaded, expected), f"{name}, {how}: loaded different content without an error"
            carried_nothing += 1
    assert refused + carried_nothing == FUZZ_CASES and refused >= 200
    assert capsys.readouterr().err == ""  # no notice: these files carry a digest


def copy_run(run, tmp_path, name="run"):
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


def flip(path, at=0.5):
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("script, name, argv", [
    ("evaluate", BEST, lambda run: [run]),
    ("generate", BEST, lambda run: [run, "--words", "5"]),
    ("tune", BEST, lambda run: [run, "--method", "cache", "--out", run.parent / "tuned"]),
    ("train", LAST, lambda run: ["--resume", run, "--epochs", "5"]),
    ("train", BEST, lambda run: ["--finetune", run]),
])
def test_a_flipped_bit_is_refused_by_every_script(trained_run, tmp_path, capsys, script, name, argv):
    """One bit flipped in the middle of a tensor: loads fine without the digest, and gives wrong
    numbers; with it, each script refuses in one line that says what to do."""
    run = copy_run(trained_run[0], tmp_path)
    flip(run / name)
    before = digests(run)
    main = {"evaluate": evaluate.main, "generate": generate.main, "tune": tune.main, "train": train.main}[script]
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv(run)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: cannot read checkpoint {run / name}: it is damaged"), lines[0]
    assert "restore it from a backup" in lines[0] and (LAST if name == BEST else BEST) in lines[0]
    assert digests(run) == before
    assert not (tmp_path / "run-finetune").exists()


def test_a_damaged_saved_pass_is_refused(tmp_path):
    """Dynamic evaluation's kept pass carries the digest too."""
    path, key = tmp_path / "pass.pt", {"weights": "w"}
    saved = {"format": 1, "key": key, "seconds": 1.0, "segment": 3, "weights": {"w": torch.ones(50)}}
    checkpoint.save_file(saved, path)
    assert PassFile(path, 1.0, key).saved["segment"] == 3
    flip(path, 0.3)
    with pytest.raises(CheckpointError, match=f"cannot read the saved pass {path}: it is damaged.*delete it"):
        PassFile(path, 1.0, key)


def test_a_checkpoint_without_a_digest_loads_with_a_notice(trained_run, tmp_path, capsys):
    """Runs saved before the digest existed: torch.save's plain archive, read with one notice."""
    run = copy_run(trained_run[0], tmp_path)
    expected = load_checkpoint(run, BEST)
    torch.save(expected, run / BEST)  # as the code before the digest wrote it
    capsys.readouterr()
    assert same(load_checkpoint(run, BEST), expected)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: {run / BEST} was written before files carried a SHA-256")
    assert evaluate.main([str(run), "--split", "valid"]) == 0
    assert torch.load(trained_run[0] / BEST, weights_only=True).keys() == expected.keys()  # plain torch reads ours


@pytest.mark.parametrize("raised", [KeyError(7), RuntimeError("PytorchStreamReader failed"), ValueError("x\ny")])
def test_whatever_torch_raises_on_an_old_file_is_one_line(trained_run, tmp_path, monkeypatch, raised):
    """torch 2.11's unpickler raised KeyError: 7 on a bit-flipped file where 2.13 raises
    UnpicklingError: files without a digest reach torch.load, and any exception there is refused."""
    path = tmp_path / BEST
    torch.save({"model": {}}, path)

    def broken(*args, **kw):
        raise raised

    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"cannot read checkpoint {path}: ") and "\n" not in str(info.value)


def test_a_damaged_corpus_cache_entry_is_rebuilt(tmp_path, corpus_dir):
    """The tokenized corpus cache carries the digest too: a flipped token id is never trained on."""
    import data
    first = data.load_corpus(str(corpus_dir))
    (entry,) = data.cache_dir().glob("*.pt")
    flip(entry, 0.6)
    again = data.load_corpus(str(corpus_dir))
    assert torch.equal(again.train, first.train) and again.itos == first.itos
    assert data.load_corpus(str(corpus_dir)).itos == first.itos  # the rebuilt entry reads back


# --- metrics.jsonl ---------------------------------------------------------------------------------

@pytest.mark.parametrize("torn", ['{"epoch": 5, "train_lo', '{"epoch": 5, "train_lo\n', "\x00\x00\x00",
                                  '{"epoch": 5, "train_loss": 1.0}\n'])
def test_a_torn_line_of_an_unsaved_epoch_does_not_block_a_resume(trained_run, tmp_path, torn):
    """What a kill during epoch 5's append leaves after 4 saved epochs, or a kill between that
    append and the save (a whole line): the resume drops it."""
    run = copy_run(trained_run[0], tmp_path)
    expected = metrics(run)
    with open(run / METRICS, "a") as f:
        f.write(torn)
    assert train.main(["--resume", str(run), "--epochs", "5"]) == 0
    rows = metrics(run)
    assert rows[:4] == expected and [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]


def test_a_torn_last_line_of_a_saved_epoch_is_dropped_with_a_notice(trained_run, tmp_path, capsys):
    run = copy_run(trained_run[0], tmp_path)
    expected = metrics(run)
    text = (run / METRICS).read_text()
    (run / METRICS).write_text(text[:-30])  # epoch 4's line, which last.pt has recorded, torn
    capsys.readouterr()
    assert train.main(["--resume", str(run), "--epochs", "5"]) == 0
    assert f"note: the last line of {run / METRICS} (epoch 4) is torn" in capsys.readouterr().err
    rows = metrics(run)
    assert rows[:3] == expected[:3] and [r["epoch"] for r in rows] == [1, 2, 3, 5]


def test_an_unreadable_recorded_line_is_refused_before_any_change(trained_run, tmp_path, capsys):
    run = copy_run(trained_run[0], tmp_path)
    lines = (run / METRICS).read_text().splitlines(keepends=True)
    lines[1] = "garbage\n"
    (run / METRICS).write_text("".join(lines))
    before = digests(run)
    capsys.readouterr()
    assert train.main(["--resume", str(run), "--epochs", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: line 2 of {run / METRICS} is unreadable and holds epoch 2")
    assert digests(run) == before  # config.json, metrics.jsonl and the lock file included


# --- one writer per run directory ------------------------------------------------------------------

# The lock's protocol, without importing torch: an exclusive flock on the run's train.lock, which
# holds the holder's pid.
HOLD = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.ftruncate(fd, 0); os.write(fd, b'%d\\n' % os.getpid()); "
        "print('held', flush=True); sys.stdin.read()")


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds a run directory's lock until killed: holder(run) -> Popen."""
    procs = []

    def start(run):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run / LOCK)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(trained_run, tmp_path, capsys, holder):
    run, data = copy_run(trained_run[0], tmp_path), trained_run[1]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    procs = {run: holder(run), fresh: holder(fresh)}
    before = {d: digests(d) for d in procs}
    capsys.readouterr()
    for target, argv in [(run, ["--resume", str(run), "--epochs", "5"]),
                         (fresh, ["--data", str(data), "--save", str(fresh), *TINY]),
                         (fresh, ["--finetune", str(run), "--save", str(fresh)])]:
        assert train.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {target} is being written by another train.py process "
                                                   f"(pid {procs[target].pid},"), err
    assert {d: digests(d) for d in procs} == before
    # Readers do not need the lock.
    assert evaluate.main([str(run), "--split", "valid"]) == 0
    assert generate.main([str(run), "--words", "3", "--seed", "1"]) == 0
    procs[run].send_signal(signal.SIGKILL)
    procs[run].wait()
    assert train.main(["--resume", str(run), "--epochs", "5"]) == 0  # the kernel released the dead holder's lock
    assert (run / LOCK).read_text() == f"{os.getpid()}\n"
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3, 4, 5]
