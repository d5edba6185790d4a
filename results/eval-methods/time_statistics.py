"""Time dynamic evaluation's gradient statistics (segments of 100 x 5 training tokens) on a
trained AWD-LSTM run, for each dtype and each LSTM kernel: what dyneval.STATS_LSTM_KERNEL is
chosen from. Two untimed segments, then the mean of --segments.

    python results/eval-methods/time_statistics.py RUN [--segments 8]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import dyneval  # noqa: E402
from checkpoint import load_model  # noqa: E402

from data import batchify, load_corpus  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--segments", type=int, default=8)
args = p.parse_args()
model, ckpt = load_model(args.run)
source = batchify(load_corpus(ckpt["data"]).train[:dyneval.STAT_BATCH_SIZE * 200], dyneval.STAT_BATCH_SIZE)
for dtype in ("fp32", "bf16"):
    for kernel in ("auto", "own", "fused"):
        dyneval.STATS_LSTM_KERNEL = {dtype: kernel}
        dyneval.gradient_statistics(model, source, 5, 2, dtype)
        t0 = time.perf_counter()
        dyneval.gradient_statistics(model, source, 5, args.segments, dtype)
        seconds = (time.perf_counter() - t0) / args.segments
        print(f"{dtype} {kernel}: {seconds * 1000:.0f} ms per 100x5 segment", flush=True)
