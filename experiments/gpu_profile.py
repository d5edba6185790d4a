"""A few batches of train.py's own training loop under torch.profiler, with the host
synchronisations they make (CUDA), for gpu_reproduce.sh --profile.

    python -m experiments.gpu_profile --out profile.txt --json profile.json -- --preset awd-lstm-gpu --device cuda \\
        --save /tmp/profile-run

Everything after `--` is train.py's command line (a new run; --save must name a new folder). The
loop runs --untimed-batches, then --batches more under the profiler and, on CUDA, under
torch.cuda.set_sync_debug_mode("warn"), which flags every operation that waits for the GPU;
train_epoch's start and end add one each (its loss sum is put on the device, and read back at the
end), so N per batch shows as 2 + N * batches. profile.txt gets the
synchronisations by source line and the operators by device time (CPU time on a CPU); the
trace for chrome://tracing or Perfetto goes next to it (profile-trace.json).
"""
import argparse
import json
import sys
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

from lm import cli
from lm.config import resolve_config
from lm.training import train_epoch
from lm.trainrun import Run


@contextmanager
def flagging_syncs(device):
    """Record a warning for every synchronising CUDA operation in the body (nothing on a CPU)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")


def profile_batches(train_argv, warmup, steps):
    """(profiler, synchronising sites as 'file:line' -> count, device) of `steps` batches of
    the training loop's train_epoch after `warmup` untimed ones."""
    cfg, _, _ = resolve_config(train_argv)
    cfg["log_interval"] = 10 ** 9  # no progress-bar reads inside the profiled batches
    cfg["max_batches"] = warmup
    run = Run(cfg)
    train_epoch(run, lambda: False)
    cfg["max_batches"] = warmup + steps
    activities = [torch.profiler.ProfilerActivity.CPU]
    if run.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(run.device)
    with torch.profiler.profile(activities=activities) as prof:
        with flagging_syncs(run.device) as caught:
            train_epoch(run, lambda: False)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)  # the profile's end, not counted
    syncs = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return prof, syncs, run.device


@cli.user_errors
def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument("--out", required=True, help="text file for the tables")
    p.add_argument("--json", default=None, help="also write the counts to this JSON file")
    p.add_argument("--untimed-batches", type=int, default=5, help="batches before the profiled ones (default: 5)")
    p.add_argument("--batches", type=int, default=10, help="profiled batches (default: 10)")
    args, train_argv = p.parse_known_args(argv)
    train_argv = [a for a in train_argv if a != "--"]
    prof, syncs, device = profile_batches(train_argv, args.untimed_batches, args.batches)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines = [f"{args.batches} training batches after {args.untimed_batches}, on {device}: "
             + (f"{sum(syncs.values())} synchronising operations" if device.type == "cuda"
                else "synchronisations are not flagged on a CPU")]
    lines += [f"  {site}: {n}" for site, n in syncs.most_common()]
    lines += ["", prof.key_averages().table(sort_by=sort, row_limit=30)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    prof.export_chrome_trace(str(Path(args.out).with_name("profile-trace.json")))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "batches": args.batches,
                                               "synchronising_operations": sum(syncs.values()) if device.type == "cuda"
                                               else None, "sites": dict(syncs)}) + "\n")
    print(lines[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
