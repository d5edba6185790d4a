"""What every script shares at its command line: argparse, except that a usage error is one
line, "error: <what is wrong> (see --help)", with exit code 2, like every other refusal here; and
the one-line reason quoted from an exception in such a refusal."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def first_line(exc, limit=200):
    """An exception's message cut to its first line (its type's name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
