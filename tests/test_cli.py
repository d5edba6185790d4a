"""Bad input gives a one-line error and a non-zero exit, never a traceback."""
import subprocess
import sys

import pytest

from helpers import ROOT, TINY, write_corpus


def run(script, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env, check=False)


def assert_clean_error(result, message):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr


@pytest.fixture
def env(tmp_path):
    import os
    return {**os.environ, "LM_DATA_CACHE": str(tmp_path / "cache")}


def test_train_errors_are_one_line(tmp_path, env):
    folder = write_corpus(tmp_path / "corpus")
    assert_clean_error(run("train.py", "--data", tmp_path / "nope", env=env), "no such folder")
    assert_clean_error(run("train.py", "--data", folder, "--tied", "--emsize", "8", "--nhid", "16", env=env),
                       "--tied needs --nhid equal to --emsize")
    assert_clean_error(run("train.py", "--data", folder, "--bptt", "0", env=env), "--bptt must be at least 1")
    assert_clean_error(run("train.py", "--model", "transformer", env=env), "invalid choice")
    assert_clean_error(run("train.py", "--resume", tmp_path / "nope", env=env), "no run directory")


def test_train_refuses_to_overwrite_or_reshape_a_run(tmp_path, env):
    folder = write_corpus(tmp_path / "corpus")
    save = tmp_path / "run"
    assert run("train.py", "--data", folder, "--save", save, "--epochs", "1", *TINY, env=env).returncode == 0
    assert_clean_error(run("train.py", "--data", folder, "--save", save, *TINY, env=env),
                       "already holds a run: pass --resume")
    assert_clean_error(run("train.py", "--resume", save, "--nhid", "64", env=env),
                       "--nhid cannot change on --resume")


def test_evaluate_and_generate_errors_are_one_line(trained_run, tmp_path, env):
    saved, _ = trained_run
    assert_clean_error(run("evaluate.py", tmp_path / "nope", env=env), "no run directory")
    assert_clean_error(run("evaluate.py", tmp_path, env=env), "has no model.pt")
    other = write_corpus(tmp_path / "other", train=["x y"], valid=["x"], test=["y"])
    assert_clean_error(run("evaluate.py", saved, "--data", other, env=env), "different vocabulary")
    assert_clean_error(run("generate.py", saved, "--temperature", "0", env=env), "--temperature must be > 0")
    assert_clean_error(run("generate.py", saved, "--top-p", "1.5", env=env), "--top-p in (0, 1]")
