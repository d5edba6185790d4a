"""Bad input gives a one-line error and a non-zero exit, never a traceback."""
import subprocess
import sys

import pytest

from helpers import ROOT


def run(script, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env, check=False)


@pytest.fixture
def env(tmp_path):
    import os
    return {**os.environ, "LM_DATA_CACHE": str(tmp_path / "cache")}


def test_errors_are_one_line_at_the_process_level(trained_run, tmp_path, env):
    """A few cases as real processes (the matrix in test_bad_input.py runs in-process): the exit
    code is 2 and stderr is one error line, with no traceback."""
    saved, folder = trained_run
    for script, args, message in [
        ("train.py", ["--data", tmp_path / "nope"], "no such folder"),
        ("train.py", ["--model", "mamba"], "invalid choice"),
        ("evaluate.py", [tmp_path], "has no model.pt"),
        ("generate.py", [saved, "--temperature", "0"], "--temperature must be > 0"),
    ]:
        result = run(script, *args, env=env)
        assert result.returncode == 2
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr
