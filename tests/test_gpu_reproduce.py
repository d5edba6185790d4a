"""experiments/gpu_reproduce.sh and its summary: the H200 record summarized, a stopped dynamic
evaluation's partial score, bad arguments, and the whole script end to end, tiny, on the CPU."""
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
import torch

import evaluate
from experiments import gpu_summary
from helpers import ROOT, write_corpus
from lm.dyneval import dynamic_evaluate, gradient_statistics

SCRIPT = ROOT / "experiments" / "gpu_reproduce.sh"
RECORD = ROOT / "results" / "h200-2026-12-04"


def test_summary_of_the_h200_record(tmp_path):
    """The record's files under the script's log names give the numbers its README states."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for name, as_name in (("bench-awd-cuda.json", "bench.json"), ("awd-metrics.jsonl", "metrics.jsonl"),
                          ("awd-config.json", "config.json"), ("awd-test.json", "test.json"),
                          ("awd-test-cache.json", "test-cache.json"), ("generate.log", "sample.log")):
        shutil.copy(RECORD / name, logs / as_name)
    assert gpu_summary.main([str(logs), str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["bench"]["bf16"] == {"ours_train": 276201, "plain_train": 297543, "ours_eval": 181334,
                                  "plain_eval": 156506, "train_ratio": 0.928, "eval_ratio": 1.159}
    assert (s["bench"]["fp32"]["ours_train"], s["bench"]["fp32"]["plain_train"]) == (171776, 173664)
    assert s["train"]["epochs"] == 28 and s["train"]["best_val_ppl"] == 82.68 and s["train"]["best_epoch"] == 28
    assert s["train"]["preset"] == "awd-lstm-adam" and s["train"]["dtype"] == "bf16"
    assert (s["test"]["test_ppl"], s["test"]["cache_ppl"], s["test"]["cache_pass_without_cache_ppl"]) == \
        (78.40, 59.41, 78.40)
    met = {t["what"]: t["met"] for t in s["targets"]}
    assert met == {"WT2 test ppl, plain": False, "with the cache": False, "with dynamic evaluation": None,
                   "bf16 training, ours / plain": False, "bf16 evaluation, ours / plain": True,
                   "WT2 test at batch 1, seconds": False}
    assert "| bf16 | 276,201 | 297,543 | 0.928 | 181,334 | 156,506 | 1.159 |" in (tmp_path / "summary.md").read_text()


def test_summary_sets_the_qrnn_beside_the_main_preset(tmp_path):
    """The h200 record as the main preset's logs and a made-up QRNN's under qrnn-*: each row is
    read from its own files, and the targets stay the main preset's."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for name, as_name in (("awd-metrics.jsonl", "metrics.jsonl"), ("awd-config.json", "config.json"),
                          ("awd-test.json", "test.json"), ("awd-test-cache.json", "test-cache.json")):
        shutil.copy(RECORD / name, logs / as_name)
    rows = [{"epoch": e, "val_loss": math.log(v), "val_ppl": v, "minutes": 2.0 * e, "train_tokens_per_s": t}
            for e, v, t in ((1, 150.0, 9e5), (2, 120.5, 8e5), (3, 121.0, 7e5))]
    (logs / "qrnn-metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (logs / "qrnn-config.json").write_text(json.dumps({"preset": "qrnn-gpu", "dtype": "bf16", "data": "wikitext-2"}))
    (logs / "qrnn-test.json").write_text(json.dumps({"ppl": 111.111, "seconds": 4.0, "tokens": 245569}))
    cache = {"ppl": 90.0, "seconds": 5.0, "without_cache": {"ppl": 111.1}}
    (logs / "qrnn-test-cache.json").write_text(json.dumps(cache))
    assert gpu_summary.main([str(logs), str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["qrnn"]["train"] == {"preset": "qrnn-gpu", "dtype": "bf16", "epochs": 3, "minutes": 6.0,
                                  "best_val_ppl": 120.5, "best_epoch": 2, "median_train_tokens_per_s": 800000}
    assert (s["qrnn"]["test"]["test_ppl"], s["qrnn"]["test"]["cache_ppl"]) == (111.11, 90.0)
    assert s["train"]["preset"] == "awd-lstm-adam" and s["test"]["test_ppl"] == 78.40
    assert next(t for t in s["targets"] if t["what"] == "WT2 test ppl, plain")["got"] == 78.40
    table = (tmp_path / "summary.md").read_text()
    assert "| qrnn-gpu | 6.0 | 3 | 800,000 | 120.5 | 111.11 | 90.0 |" in table and "| awd-lstm-adam |" in table


@pytest.mark.slow
def test_a_stopped_dynamic_pass_reports_the_text_it_scored(trained_run, tmp_path):
    """Killed after its 8th segment (saved after each), the kept pass gives the perplexity of a
    pass over just those 40 tokens."""
    run, _ = trained_run
    flags = [str(run), "--split", "valid", "--batch-size", "1", "--dynamic-eval", "--dyn-lr", "1e-3",
             "--dyn-stat-batches", "3"]
    kept = tmp_path / "pass.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LM_FAULT": "adapting@8"}
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *flags, "--dyn-checkpoint", str(kept),
                           "--dyn-checkpoint-every", "0"], env=env, cwd=ROOT, capture_output=True, check=False)
    assert proc.returncode < 0 and kept.exists()
    partial = gpu_summary.partial_pass(kept)
    job = evaluate.prepare(evaluate.get_parser().parse_args(flags))
    ms = gradient_statistics(job.model, job.stats_source, 5, 3)
    nats, _ = dynamic_evaluate(job.model, job.source[:41], ms, job.dynamic)  # 40 targets, 8 segments
    assert partial["tokens"] == 40 and partial["ppl"] == pytest.approx(math.exp(nats), abs=0.006)


@pytest.mark.parametrize("args, message", [
    (["3", "OUT"], "MINUTES must be a number above 3"), (["ten", "OUT"], "MINUTES must be a number above 3"),
    (["15"], "usage: experiments/gpu_reproduce.sh"), (["15", "FULL"], "is not empty"),
    (["QRNN_MINUTES=12", "15", "OUT"], "QRNN_MINUTES must be a number from 0 to below MINUTES - 3"),
    (["QRNN_MINUTES=-1", "15", "OUT"], "QRNN_MINUTES must be a number")])
def test_bad_arguments_are_refused_in_one_line(tmp_path, args, message):
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "old.md").write_text("kept")
    env = {**os.environ, **dict(a.split("=") for a in args if "=" in a)}
    args = [str(tmp_path / a) if a.isupper() else a for a in args if "=" not in a]
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, check=False, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1
    assert (tmp_path / "FULL" / "old.md").read_text() == "kept"


@pytest.mark.slow
def test_the_whole_script_runs_tiny_on_the_cpu(tmp_path):
    """Every step, shrunk to seconds, on a tiny corpus: bench.py is stopped by its 3-second deadline
    and the script goes on; pytest -m cuda finds nothing to run here, which is recorded; the
    summary agrees with the logs it bundles, and OUTDIR holds at most 8 files."""
    corpus = write_corpus(tmp_path / "corpus")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PY": sys.executable, "DEVICE": "cpu", "WORK": str(work), "OMP_NUM_THREADS": "1",
           "LM_DATA_CACHE": str(tmp_path / "cache"), "PROMPT": "the cat", "DYN_STAT_BATCHES": "5",
           "TRAIN_ARGS": f"--data {corpus} --emsize 16 --nhid 16 --nlayers 2 --batch-size 8 --bptt 10 "
                         "--eval-batch-size 4 --dtype fp32",
           "CACHE_ARGS": "--cache-window 50 --cache-theta 0.5 --cache-lambda 0.1",
           "PYTEST_ARGS": "-m cuda -q tests/test_gpu_recipe.py", "CAP_BENCH": "3",
           "BENCH_ARGS": "--config lstm-small --steps 1 --windows 1 --warmup 0 --eval-steps 1"}
    t0, cpu0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(["bash", str(SCRIPT), "--profile", "3.05", str(out)], env=env, capture_output=True,
                          text=True, check=False)
    seconds, cpu = time.time() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = cpu.ru_utime + cpu.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    assert proc.returncode == 0, proc.stderr
    # Within its MINUTES + 3; under a minute of CPU (on a shared machine the wall clock waits for others).
    assert seconds < 6.05 * 60 and cpu_seconds < 60
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "profile.txt", "summary.json", "summary.md"]
    s = json.loads((out / "summary.json").read_text())
    exits = {r["step"]: r["exit"] for r in s["steps"]}
    assert exits == {"versions": 0, "tests": 5, "bench": 124, "train": 0, "test": 0, "test-cache": 0,
                     "qrnn-train": 0, "qrnn-test": 0, "qrnn-test-cache": 0, "sample": 0, "profile": 0,
                     "test-dynamic": 0}
    bench = next(r for r in s["steps"] if r["step"] == "bench")
    assert bench["deadline"] == 3 and bench["seconds"] <= 3 + 11
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = {m.name.removeprefix("logs/"): tar.extractfile(m).read().decode() for m in tar if m.isfile()}
    # Each ended by its budget, half of MINUTES - 3 = 0.025 minutes, long before the presets' 90 epochs.
    for run, prefix, preset in ((s, "", "awd-lstm-gpu"), (s["qrnn"], "qrnn-", "qrnn-gpu")):
        rows = [json.loads(line) for line in logs[f"{prefix}metrics.jsonl"].splitlines()]
        assert run["train"]["best_val_ppl"] == round(min(r["val_ppl"] for r in rows), 2)
        assert run["train"]["preset"] == preset and 0.025 <= rows[-1]["minutes"] < 0.05 and len(rows) < 90
        assert json.loads(logs[f"{prefix}config.json"])["model"] == preset.removesuffix("-gpu")
        for name, key in (("test", "test_ppl"), ("test-cache", "cache_ppl")):
            assert run["test"][key] == round(json.loads(logs[f"{prefix}{name}.json"])["ppl"], 2)
    assert "test-dynamic.json" in logs and "qrnn-test-dynamic.json" not in logs
    assert s["test"]["dynamic_ppl"] == round(json.loads(logs["test-dynamic.json"])["ppl"], 2)
    summary = (out / "summary.md").read_text()
    assert f"| qrnn-gpu | {s['qrnn']['train']['minutes']} |" in summary and "| awd-lstm-gpu |" in summary
    assert s["test"]["cache_pass_without_cache_ppl"] == s["test"]["test_ppl"]
    assert json.loads(logs["test-dynamic.json"])["dynamic_eval"]["stat_batches"] == 5
    assert s["sample"] == logs["sample.log"].strip() and s["sample"].startswith("the cat")
    assert "no tests ran" in s["tests"] or "deselected" in s["tests"]
    assert "torch: " + torch.__version__ in logs["versions.txt"]
    assert "Name" in (out / "profile.txt").read_text() and "profile-trace.json" in logs
    assert all(t["got"] is None for t in s["targets"])  # WikiText-2's targets; this is not WikiText-2
    print(f"gpu_reproduce.sh, tiny on the CPU: {seconds:.0f} s, {cpu_seconds:.0f} s of CPU")


def test_help_prints_the_header():
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("The GPU numbers in one command") and "CAP_TESTS (90)" in proc.stdout
    assert "set -u" not in proc.stdout and "#" not in proc.stdout.splitlines()[0]
