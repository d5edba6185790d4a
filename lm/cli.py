"""What every script shares at its command line: argparse, except that a usage error is one
line, "error: <what is wrong> (see --help)", with exit code 2, like every other refusal here; the
checks of count and path arguments; the one-line reason quoted from an exception in such a
refusal; the --device values and their check; and how a long loop stops on Ctrl-C or SIGTERM
with its work saved."""
import argparse
import functools
import signal
import sys
from pathlib import Path

import torch

DEVICES = "cpu, cuda, cuda:1, ..., or another accelerator that PyTorch has here (mps, xpu), in fp32"


class UserError(Exception):
    """Something the user can fix (a flag, a path, a file, the machine), reported by the script as
    one line, "error: <message>", with exit code 2 and no traceback. Each area has a subclass."""


def user_errors(main):
    """A script's main(argv), with any UserError raised below it turned into its one line."""
    @functools.wraps(main)
    def guarded(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return guarded


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def count(text):
    """argparse type of a count flag (words, steps, windows, epochs...): an int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def count_or_zero(text):
    """argparse type of a count flag whose help says what 0 means: an int of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


count.__name__ = count_or_zero.__name__ = "int"  # argparse names the type in its message for a non-integer


def existing_ancestor(path):
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder(path, flag):
    """Refuse `path` as a folder that this script writes into (creating it and its parents where
    missing) when it cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    ancestor = existing_ancestor(path)
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is a file, not a folder")


def check_file(path, flag):
    """Refuse `path` as a file that this script writes (its folder must exist); no path (the flag
    was not given) passes. Checked before the work whose result goes there."""
    if not path:
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder, not a file")
    if not path.parent.is_dir():
        what = "is a file, not a folder" if path.parent.exists() else "does not exist; create it first"
        raise UserError(f"{flag} {path}: the folder {path.parent} {what}")


def first_line(exc, limit=200):
    """An exception's message cut to its first line (its type's name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def default_device():
    """CUDA where PyTorch sees a GPU, else the CPU; other accelerators only when asked for."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device):
    """Refuse --device `device` when PyTorch cannot use it here (its dtype: precision.check_dtype)."""
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise UserError(f"--device {device}: {first_line(e)}") from None
    if kind == "cpu":
        available = True
    elif kind == "cuda":
        available = torch.cuda.is_available()
    else:  # mps, xpu, ...: PyTorch's current accelerator, if any
        current = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        available = current is not None and current.type == kind
    if not available:
        what = "CUDA GPU" if kind == "cuda" else f"{kind} device"
        raise UserError(f"--device {device}, but PyTorch sees no {what} here; use --device cpu")


class StopOnInterrupt:
    """The first Ctrl-C or SIGTERM (what schedulers and shutdowns send) asks the loop to stop
    after the current `step` (a batch, a segment) and save; a second one aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, step="batch"):
        self.step = step

    def __enter__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: saving after this {self.step} (send it again to abort without saving)", file=sys.stderr)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
