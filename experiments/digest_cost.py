"""What the checkpoint digest costs: loading and saving one checkpoint with and without it.

    python train.py --preset awd-lstm-wt2 --epochs 1 --max-batches 1 --save /tmp/awd-cost
    python -m experiments.digest_cost /tmp/awd-cost/last.pt /tmp/awd-cost/model.pt --repeats 7

For each checkpoint it prints the median seconds of: torch.load(weights_only=True) of the file;
checkpoint.load_checkpoint (the digest checked from the same memory map, then the same load);
an atomic torch.save (temporary file, fsync, rename); checkpoint.save_checkpoint (hashed as it is
written); and the SHA-256 of the file's bytes alone. Rounds alternate the variants, so that a
drift of the machine's speed falls on both. Scratch files go beside the checkpoint.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lm import checkpoint, cli


def seconds(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def measure(path, repeats):
    """Median seconds of each variant for the checkpoint at path."""
    ckpt = torch.load(path, weights_only=True)
    ours, plain = path.with_name(f".cost-digest-{path.name}"), path.with_name(f".cost-plain-{path.name}")
    checkpoint.save_checkpoint(ckpt, ours)
    data = memoryview(ours.read_bytes())
    variants = {
        "load, torch.load": lambda: torch.load(ours, weights_only=True),
        "load, verified": lambda: checkpoint.load_checkpoint(ours),
        "save, atomic torch.save": lambda: checkpoint.write_atomically(plain, lambda f: torch.save(ckpt, f)),
        "save, hashed": lambda: checkpoint.save_checkpoint(ckpt, ours),
        "SHA-256 of the bytes": lambda: checkpoint.verify(data),
    }
    times = {name: [] for name in variants}
    for _ in range(repeats + 1):  # the first round warms the page cache and is dropped
        for name, f in variants.items():
            times[name].append(seconds(f))
    ours.unlink()
    plain.unlink(missing_ok=True)
    return {"file": str(path), "megabytes": round(len(data) / 1e6, 1),
            **{name: round(statistics.median(t[1:]), 4) for name, t in times.items()}}


@cli.user_errors
def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint files (model.pt, last.pt) to measure")
    p.add_argument("--repeats", type=cli.count, default=7, help="timed rounds per variant (default: 7)")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args(argv)
    rows = []
    for path in args.checkpoints:
        if not path.is_file():
            p.error(f"{path} is not a file")
        rows.append(measure(path, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
