"""What every script shares at its command line: argparse, except that a usage error is one
line, "error: <what is wrong> (see --help)", with exit code 2, like every other refusal here; and
the one-line reason quoted from an exception in such a refusal; the --device values and their
check; and how a long loop stops on Ctrl-C or SIGTERM with its work saved."""
import argparse
import signal
import sys

import torch

import kernels

DEVICES = "cpu, cuda, cuda:1, ..., or another accelerator that PyTorch has here (mps, xpu), in fp32"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def first_line(exc, limit=200):
    """An exception's message cut to its first line (its type's name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def default_device():
    """CUDA where PyTorch sees a GPU, else the CPU; other accelerators only when asked for."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_problem(device, dtype=None, unscaled_backward=False):
    """Why --device `device` (with --dtype `dtype`, if given) cannot be used here, as one line,
    or None. unscaled_backward: see kernels.dtype_problem."""
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        return f"--device {device}: {first_line(e)}"
    if kind == "cpu":
        available = True
    elif kind == "cuda":
        available = torch.cuda.is_available()
    else:  # mps, xpu, ...: PyTorch's current accelerator, if any
        current = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        available = current is not None and current.type == kind
    if not available:
        what = "CUDA GPU" if kind == "cuda" else f"{kind} device"
        return f"--device {device}, but PyTorch sees no {what} here; use --device cpu"
    problem = dtype and kernels.dtype_problem(device, dtype, unscaled_backward)
    return f"--dtype {dtype}: {problem}" if problem else None


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
