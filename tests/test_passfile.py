"""Dynamic evaluation's files (lm/passfile.py): gradient statistics kept for later splits and
runs, and a pass kept so that it outlives its process (stopped, killed, continued), in
evaluate.py and tune.py."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import evaluate
from helpers import ROOT, digests
from lm import dyneval, faults


def test_kept_statistics_are_reused_and_checked(trained_run, tmp_path, monkeypatch, capsys):
    """--dyn-stats: the first call writes the file, a second split reads it (and scores exactly
    as a run that computes them), and statistics of other settings or garbage are refused."""
    run, _ = trained_run
    stats, out = tmp_path / "ms.pt", tmp_path / "out.json"
    flags = ["--dynamic-eval", "--dyn-stat-batches", "3", "--json", str(out)]
    assert evaluate.main([str(run), "--split", "valid", *flags, "--dyn-stats", str(stats)]) == 0
    assert stats.exists()
    assert evaluate.main([str(run), *flags]) == 0
    computed = json.loads(out.read_text())["loss"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the statistics were computed again")

    monkeypatch.setattr(dyneval, "gradient_statistics", must_not_run)
    assert evaluate.main([str(run), *flags, "--dyn-stats", str(stats)]) == 0
    assert json.loads(out.read_text())["loss"] == computed
    kept = stats.read_bytes()
    capsys.readouterr()
    assert evaluate.main([str(run), "--dynamic-eval", "--dyn-stat-batches", "4", "--dyn-stats", str(stats)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "stat_batches" in err and err.count("\n") == 1
    assert stats.read_bytes() == kept  # not overwritten
    stats.write_bytes(b"not a torch file")
    assert evaluate.main([str(run), *flags, "--dyn-stats", str(stats)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read gradient statistics") and err.count("\n") == 1


def test_tune_keeps_the_statistics_for_the_test_command(trained_run, tmp_path, capsys, monkeypatch):
    import tune
    run, _ = trained_run
    stats = tmp_path / "ms.pt"
    flags = ["--method", "dynamic", "--tokens", "200", "--lrs", "1e-3", "--lambdas", "0.01", "--dyn-stat-batches", "2",
             "--dyn-stats", str(stats), "--out", str(tmp_path)]
    assert tune.main([str(run), *flags]) == 0
    out = capsys.readouterr().out
    assert stats.exists()
    if "no setting beats plain evaluation" not in out:
        assert f"--dyn-stat-batches 2 --dyn-stats {stats}" in out
    monkeypatch.setattr(dyneval, "gradient_statistics", None)  # evaluate.py must read them from the file
    assert evaluate.main([str(run), "--split", "valid", "--dynamic-eval", "--dyn-stat-batches", "2",
                          "--dyn-stats", str(stats)]) == 0


KEPT_PASS = ["--split", "valid", "--dynamic-eval", "--cache", "--cache-window", "20", "--cache-theta", "0.5",
             "--cache-lambda", "0.2", "--dyn-lr", "1e-3",
             "--dyn-stat-batches", "3"]


def count_segments(monkeypatch, then=None):
    """Count the segments dynamic evaluation finishes (faults.point's "adapting"); then(n) runs
    after the n-th."""
    done = []

    def point(name):
        if name == "adapting":
            done.append(name)
            if then:
                then(len(done))

    monkeypatch.setattr(faults, "point", point)
    return done


def test_a_stopped_pass_continues_to_the_numbers_of_one_never_stopped(trained_run, tmp_path, monkeypatch, capsys):
    """--dyn-checkpoint: Ctrl-C after the 4th segment saves the pass after the 5th; the same
    command continues from there (it runs only the segments left) and ends with the numbers of a
    pass never stopped, cache and model-alone sums included; the file is then deleted."""
    run, _ = trained_run
    before = digests(run)
    whole, part, kept = tmp_path / "whole.json", tmp_path / "part.json", tmp_path / "pass.pt"
    total = count_segments(monkeypatch)
    assert evaluate.main([str(run), *KEPT_PASS, "--json", str(whole)]) == 0
    total = len(total)
    count_segments(monkeypatch, lambda n: n == 4 and os.kill(os.getpid(), signal.SIGINT))
    assert evaluate.main([str(run), *KEPT_PASS, "--json", str(part), "--dyn-checkpoint", str(kept)]) == 130
    assert kept.exists() and not part.exists()
    assert "run the same command to continue" in capsys.readouterr().err
    rest = count_segments(monkeypatch)
    assert evaluate.main([str(run), *KEPT_PASS, "--json", str(part), "--dyn-checkpoint", str(kept)]) == 0
    assert len(rest) == total - 5 and not kept.exists()
    a, b = json.loads(whole.read_text()), json.loads(part.read_text())
    assert (a["loss"], a["accuracy"], a["without_cache"]) == (b["loss"], b["accuracy"], b["without_cache"])
    assert a["loss"] != a["without_cache"]["loss"]
    assert (a["dynamic_eval"]["continued_from_segment"], b["dynamic_eval"]["continued_from_segment"]) == (None, 5)
    assert digests(run) == before


def test_a_kept_pass_of_another_job_is_refused_and_left_alone(trained_run, tmp_path, monkeypatch, capsys):
    run, _ = trained_run
    kept = tmp_path / "pass.pt"
    count_segments(monkeypatch, lambda n: n == 2 and os.kill(os.getpid(), signal.SIGINT))
    assert evaluate.main([str(run), *KEPT_PASS, "--dyn-checkpoint", str(kept)]) == 130
    saved = kept.read_bytes()
    capsys.readouterr()
    assert evaluate.main([str(run), *KEPT_PASS, "--dyn-lr", "2e-3", "--dyn-checkpoint", str(kept)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "settings" in err and err.count("\n") == 1
    assert kept.read_bytes() == saved
    kept.write_bytes(saved[:1000])  # torn
    assert evaluate.main([str(run), *KEPT_PASS, "--dyn-checkpoint", str(kept)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the saved pass") and err.count("\n") == 1
    assert evaluate.main([str(run), "--dyn-checkpoint", str(kept)]) == 2
    assert capsys.readouterr().err == "error: --dyn-checkpoint applies to --dynamic-eval only\n"


def test_a_killed_pass_continues_from_its_last_save(trained_run, tmp_path):
    """SIGKILL (LM_FAULT) after the 7th segment of a pass saved after every segment: the same
    command continues it to the numbers of a pass never stopped."""
    run, _ = trained_run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LM_DATA_CACHE": str(tmp_path / "cache")}
    env.pop("LM_FAULT", None)

    def evaluate_py(out, *flags, fault=None):
        proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(run), *KEPT_PASS, "--json", str(out),
                               *flags], env={**env, "LM_FAULT": fault} if fault else env, cwd=ROOT,
                              capture_output=True, text=True, check=False)
        return proc.returncode

    kept = tmp_path / "pass.pt"
    assert evaluate_py(tmp_path / "whole.json") == 0
    flags = ["--dyn-checkpoint", str(kept), "--dyn-checkpoint-every", "0"]
    assert evaluate_py(tmp_path / "part.json", *flags, fault="adapting@7") == -signal.SIGKILL
    assert torch.load(kept, weights_only=True)["segment"] == 7
    assert evaluate_py(tmp_path / "part.json", *flags) == 0 and not kept.exists()
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "part"))
    assert (a["loss"], a["accuracy"], a["without_cache"]) == (b["loss"], b["accuracy"], b["without_cache"])


def test_a_stopped_tuning_run_skips_the_settings_it_finished(trained_run, tmp_path, monkeypatch, capsys):
    """tune.py --method dynamic keeps each finished setting: run again after a stop in the second
    one, it scores only that one and writes the table of a run never stopped."""
    import tune
    run, _ = trained_run
    flags = ["--method", "dynamic", "--tokens", "120", "--lrs", "1e-3", "3e-3", "--lambdas", "0.01",
             "--dyn-stat-batches", "2"]
    assert tune.main([str(run), *flags, "--out", str(tmp_path / "whole")]) == 0
    scored, real = [], dyneval.dynamic_evaluate

    def stopped_in_the_second(*args, **kwargs):
        scored.append(args[3].lr)
        if len(scored) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tune, "dynamic_evaluate", stopped_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        tune.main([str(run), *flags, "--out", str(tmp_path / "part")])
    assert json.loads((tmp_path / "part" / "tune-dynamic.partial.json").read_text())["rows"][0]["lr"] == 1e-3
    scored.clear()
    monkeypatch.setattr(tune, "dynamic_evaluate", lambda *a, **k: scored.append(a[3].lr) or real(*a, **k))
    assert tune.main([str(run), *flags, "--out", str(tmp_path / "part")]) == 0
    assert scored == [3e-3] and not (tmp_path / "part" / "tune-dynamic.partial.json").exists()
    rows = [json.loads((tmp_path / d / "tune-dynamic.json").read_text())["rows"] for d in ("whole", "part")]
    assert rows[0] == rows[1]
