"""The command-line parser of every script: argparse, except that a usage error is one line,
"error: <what is wrong> (see --help)", with exit code 2, like every other refusal here."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
