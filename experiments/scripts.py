"""How the experiment drivers run the repository's scripts (train.py, evaluate.py, generate.py): as
a user would, each in its own Python process started from the current folder, so that a driver
only ever uses their command lines."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # where the scripts are


def run(script, argv, capture=False):
    """Run `python SCRIPT ARGV...` and return (exit code, its stdout when `capture`, else None);
    without capture its output goes to the driver's own stdout and stderr as it comes."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], check=False,
                          stdout=subprocess.PIPE if capture else None, text=True)
    return proc.returncode, proc.stdout
