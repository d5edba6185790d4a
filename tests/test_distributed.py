"""train.py under torchrun with two CPU processes (gloo): equal to one process with dropout off,
identical weights on every process with it on, exact resume, and one-line errors for a bad
setup. The default suite runs the baseline equivalence and the bad batch size; the rest:

    python -m pytest tests/test_distributed.py -m "slow or not slow"
"""
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

import train
from helpers import ROOT, TINY, metrics, write_corpus
from lm import distributed, trainrun
from lm.config import ConfigError, resolve_config

AWD_NO_DROPOUT = ["--model", "awd-lstm", "--emsize", "16", "--nhid", "32", "--nlayers", "2", "--batch-size", "8",
                  "--bptt", "10", "--eval-batch-size", "4", "--device", "cpu", "--log-interval", "10", "--lr", "10",
                  "--dropout-input", "0", "--dropout-hidden", "0", "--dropout-output", "0", "--dropout-weight", "0",
                  "--dropout-embedding", "0", "--dtype", "fp32", "--nonmono", "1", "--max-batches", "10",
                  "--epochs", "6"]
AWD_DROPOUT = [*AWD_NO_DROPOUT, "--dropout-input", "0.2", "--dropout-hidden", "0.1", "--dropout-output", "0.2",
               "--dropout-weight", "0.3", "--dropout-embedding", "0.05", "--average-start", "0.5",
               "--max-batches", "1000", "--epochs", "5"]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def torchrun(args, tmp_path, fault=None, processes=2):
    """train.py under the real torchrun with 2 processes (or `processes`); returns its exit code."""
    env = {**os.environ, "LM_DATA_CACHE": str(tmp_path / "cache")}
    env.pop("LM_FAULT", None)
    if fault:
        env["LM_FAULT"] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"localhost:{free_port()}", str(ROOT / "train.py"), *map(str, args)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if fault is None:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode


def ranks(args, tmp_path, size=2, started=None, timeout=120):
    """Start the ranks of a world by hand, with the environment torchrun gives its workers, and
    return each rank's (exit code, stderr); `started` limits which ranks are started."""
    port = free_port()
    procs = []
    for rank in started if started is not None else range(size):
        env = {**os.environ, "LM_DATA_CACHE": str(tmp_path / "cache"), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(size), "LOCAL_WORLD_SIZE": str(size), "MASTER_ADDR": "localhost",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return [(p.wait(timeout=timeout), p.communicate()[1]) for p in procs]


def single(args, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    assert train.main([str(a) for a in args]) == 0


def weights(run, name="last.pt"):
    ckpt = torch.load(run / name, weights_only=True)
    return ckpt["model"], ckpt["averaging"]


def assert_close_runs(a, b, tol=1e-5):
    rows_a, rows_b = metrics(a), metrics(b)
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["averaged"] == rb["averaged"] and ra["train_tokens"] == rb["train_tokens"]
        for key in ("train_loss", "val_loss"):
            assert ra[key] == pytest.approx(rb[key], abs=tol), (ra["epoch"], key)
    (wa, avg_a), (wb, avg_b) = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=tol)
    for k in avg_a["average"]:
        torch.testing.assert_close(avg_a["average"][k], avg_b["average"][k], rtol=0, atol=tol)


def test_two_processes_equal_one_for_the_baseline(tmp_path, monkeypatch):
    data = write_corpus(tmp_path / "corpus")
    args = ["--data", data, *TINY, "--epochs", "3"]
    single([*args, "--save", tmp_path / "one"], tmp_path, monkeypatch)
    torchrun([*args, "--save", tmp_path / "two"], tmp_path)
    assert_close_runs(tmp_path / "one", tmp_path / "two")


def test_torchrun_makes_a_distributed_world_even_of_one_process():
    world = distributed.world_from_env
    assert world({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}).active
    assert world({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}).active
    assert not world({}).active  # plain python


@pytest.mark.slow
def test_one_process_under_torchrun_runs_the_distributed_code_and_equals_plain_python(tmp_path, monkeypatch):
    """torchrun --nproc-per-node 1, as on a machine with one GPU, goes through the process group,
    DistributedDataParallel and the per-step all-reduce (its checkpoint keeps every rank's random
    state, which only the distributed code does), and trains the same run as plain python."""
    data = write_corpus(tmp_path / "corpus")
    args = ["--data", data, *TINY, "--dropout", "0.3", "--epochs", "1"]
    single([*args, "--save", tmp_path / "plain"], tmp_path, monkeypatch)
    torchrun([*args, "--save", tmp_path / "one"], tmp_path, processes=1)
    assert "ranks" in torch.load(tmp_path / "one" / "last.pt", weights_only=True)["rng"]
    assert_close_runs(tmp_path / "plain", tmp_path / "one")


@pytest.mark.slow
def test_two_processes_equal_one_for_awd_lstm_with_nt_asgd(tmp_path, monkeypatch):
    data = write_corpus(tmp_path / "corpus")
    single(["--data", data, *AWD_NO_DROPOUT, "--save", tmp_path / "one"], tmp_path, monkeypatch)
    torchrun(["--data", data, *AWD_NO_DROPOUT, "--save", tmp_path / "two"], tmp_path)
    rows = metrics(tmp_path / "two")
    assert any(r["averaged"] for r in rows) and not rows[0]["averaged"]  # the trigger fired during the run
    assert_close_runs(tmp_path / "one", tmp_path / "two")


@pytest.fixture(scope="module")
def dropout_two(tmp_path_factory):
    """An uninterrupted 2-process AWD-LSTM run with every dropout on and averaging from halfway."""
    base = tmp_path_factory.mktemp("ddp-dropout")
    data = write_corpus(base / "corpus")
    torchrun(["--data", data, *AWD_DROPOUT, "--save", base / "run"], base)
    return base, data


@pytest.mark.slow
def test_with_dropout_on_every_process_ends_with_the_same_weights(dropout_two):
    """train.py itself compares digests of every process's weights and averaged weights at the
    end (distributed.check_identical) and fails if they differ; the run must also learn."""
    base, _ = dropout_two
    rows = metrics(base / "run")
    assert rows[-1]["val_loss"] < min(rows[0]["val_loss"], math.log(21)) - 0.5  # well below uniform over 21 words
    assert rows[-1]["averaged"]
    assert json.loads((base / "run" / "config.json").read_text())["batch_size"] == 8  # the global batch


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_numbers(dropout_two, tmp_path):
    """Killed in epoch 2 (SIGKILL on both processes), resumed under torchrun: the same metrics
    and weights as the uninterrupted run, so each process got its own random state back."""
    base, data = dropout_two
    run = tmp_path / "run"
    args = ["--data", data, *AWD_DROPOUT, "--checkpoint-every", "0.001", "--save", run]  # mid-epoch checkpoints too
    assert torchrun(args, tmp_path, fault="batch@55") != 0
    assert [r["epoch"] for r in metrics(run)] == [1]
    torchrun(["--resume", run], tmp_path)
    assert metrics(run) == metrics(base / "run")
    (w, avg), (w_ref, avg_ref) = weights(run), weights(base / "run")
    assert all(torch.equal(w[k], w_ref[k]) for k in w)
    assert all(torch.equal(avg["average"][k], avg_ref["average"][k]) for k in avg["average"])


def test_an_indivisible_batch_is_one_line_on_every_rank(tmp_path):
    data = write_corpus(tmp_path / "corpus")
    for code, err in ranks(["--data", data, *TINY, "--batch-size", "7", "--save", tmp_path / "run"], tmp_path):
        assert code == 2
        assert err.strip() == ("error: --batch-size 7 is the global batch and does not split over 2 processes; "
                               "make it a multiple of 2")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_missing_rendezvous_is_one_line_without_a_hang(tmp_path):
    """Rank 0 of 2 started alone: it gives up after --dist-timeout with one line."""
    data = write_corpus(tmp_path / "corpus")
    [(code, err)] = ranks(["--data", data, *TINY, "--dist-timeout", "3", "--save", tmp_path / "run"], tmp_path,
                          started=[0], timeout=60)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2: the rendezvous at localhost:"), err
    assert "Traceback" not in err


def test_resuming_with_another_number_of_processes_is_a_one_line_error(trained_run, tmp_path, capsys, monkeypatch):
    """A run trained by one process, resumed as rank 0 of 2 (checked before any communication)."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    world = distributed.World(rank=0, size=2, local_rank=0, local_size=2)
    cfg, ckpt, mode = resolve_config(["--resume", str(run), "--epochs", "10"])
    monkeypatch.setattr(distributed, "columns", lambda data, w: data)
    monkeypatch.setattr(trainrun, "DistributedDataParallel", lambda model, device_ids: model)
    with pytest.raises(ConfigError, match="trained by 1 process.*resume it with 1"):
        trainrun.Run(cfg, ckpt, mode, world)



@pytest.mark.slow
def test_a_time_budget_schedule_gives_every_process_the_same_learning_rate(tmp_path):
    """One-cycle over --max-minutes reads rank 0's clock on every process; with each process's own
    clock the learning rates, and so the weights, would differ (check_identical would fail)."""
    data = write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    torchrun(["--data", data, *TINY, "--optimizer", "adam", "--lr", "0.01", "--schedule", "onecycle",
              "--max-minutes", "0.1", "--epochs", "1000", "--save", run], tmp_path)
    assert metrics(run)[-1].get("partial")
