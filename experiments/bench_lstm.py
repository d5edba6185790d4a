"""One LSTM layer's forward + backward (bf16 autocast by default): PyTorch's fused kernel (torch.lstm)
against ours (recurrence.lstm_sequence), interleaved in one process, at the layer shapes of our
configs. This is where WeightDropLSTM's `auto` kernel threshold (recurrence.OWN_MIN_STEP_WORK) comes
from. With --forward-only, the forward alone without gradients, at evaluation's shapes (20,000
tokens per call at batch 10, and batch 1), where `auto` always takes the fused kernel.

    python -m experiments.bench_lstm --json results/bench-lstm-kernels-cpu.json
    python -m experiments.bench_lstm --dtype fp32 --json results/bench-lstm-kernels-cpu-fp32.json
    python -m experiments.bench_lstm --forward-only --json results/bench-lstm-kernels-eval-cpu.json

Each repetition times the fused layer and then ours on the same input, weights and output
gradient; the first repetition is a warm-up and the median of the rest is reported.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lm import cli
from lm.precision import DTYPES, autocast
from lm.recurrence import OWN_MIN_STEP_WORK, fused_lstm, lstm_sequence

# (name, steps, batch, input, hidden)
SHAPES = [
    ("awd-lstm-wt2 layer 1", 70, 80, 400, 1150),
    ("awd-lstm-wt2 layer 2", 70, 80, 1150, 1150),
    ("awd-lstm-wt2 layer 3", 70, 80, 1150, 400),
    ("char awd-lstm layer 1", 100, 64, 128, 512),
    ("char awd-lstm layer 2", 100, 64, 512, 512),
    ("dtype check layer 1", 70, 32, 128, 256),
    ("dtype check layer 2", 70, 32, 256, 128),
    ("lstm-small", 35, 20, 200, 200),
]
EVAL_SHAPES = [
    ("awd-lstm-wt2 layer 1, batch 10", 2000, 10, 400, 1150),
    ("awd-lstm-wt2 layer 2, batch 10", 2000, 10, 1150, 1150),
    ("awd-lstm-wt2 layer 3, batch 10", 2000, 10, 1150, 400),
    ("awd-lstm-wt2 layer 1, batch 1", 2000, 1, 400, 1150),
    ("awd-lstm-wt2 layer 2, batch 1", 2000, 1, 1150, 1150),
    ("awd-lstm-wt2 layer 3, batch 1", 2000, 1, 1150, 400),
]


def time_layer(steps, batch, inputs, hidden, reps, device, dtype, forward_only=False):
    """Median seconds of forward + backward (or of the forward alone, without gradients) for
    (fused, ours)."""
    torch.manual_seed(0)
    x = torch.randn(steps, batch, inputs, device=device, requires_grad=True)
    state = tuple(torch.zeros(1, batch, hidden, device=device) for _ in range(2))
    bound = hidden ** -0.5
    weights = [(torch.rand(*shape, device=device) * 2 - 1).mul_(bound).requires_grad_()
               for shape in ((4 * hidden, inputs), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,))]
    grad_out = torch.randn(steps, batch, hidden, device=device)
    times = {"fused": [], "own": []}
    kernels = (("fused", lambda *a: fused_lstm(*a, train=not forward_only)), ("own", lstm_sequence))
    for rep in range(reps + 1):
        for name, run in kernels:
            t0 = time.perf_counter()
            with torch.set_grad_enabled(not forward_only), autocast(device, dtype):
                out, _ = run(x, state, *weights)
            if not forward_only:
                out.float().backward(grad_out)
            if rep:
                times[name].append(time.perf_counter() - t0)
    return statistics.median(times["fused"]), statistics.median(times["own"])


@cli.user_errors
def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="compute precision (default: bf16)")
    p.add_argument("--reps", type=cli.count, default=5, help="timed repetitions per shape (default: 5)")
    p.add_argument("--threads", type=cli.count, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--forward-only", action="store_true",
                   help="time the forward alone, without gradients, at evaluation's shapes")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results to FILE")
    args = p.parse_args(argv)
    cli.check_file(args.json, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, steps, batch, inputs, hidden in EVAL_SHAPES if args.forward_only else SHAPES:
        t_fused, t_own = time_layer(steps, batch, inputs, hidden, args.reps, "cpu", args.dtype, args.forward_only)
        work = batch * hidden * (inputs + hidden)
        picks_own = args.dtype == "bf16" and work >= OWN_MIN_STEP_WORK and not args.forward_only
        rows.append({"name": name, "steps": steps, "batch": batch, "input": inputs, "hidden": hidden,
                     "step_work": work, "auto_picks_own": picks_own,
                     "fused_ms": round(t_fused * 1e3, 3), "own_ms": round(t_own * 1e3, 3),
                     "speedup_own": round(t_fused / t_own, 3)})
        r = rows[-1]
        print(f"{name:22s} T{steps} B{batch} {inputs}->{hidden}: fused {r['fused_ms']:7.1f} ms, "
              f"own {r['own_ms']:7.1f} ms, own {r['speedup_own']:.2f}x"
              f"{' (auto: own)' if r['auto_picks_own'] else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps({"dtype": args.dtype, "forward_only": args.forward_only,
                                               "threads": torch.get_num_threads(),
                                               "torch": torch.__version__,
                                               "reps": args.reps, "threshold": OWN_MIN_STEP_WORK,
                                               "layers": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
