"""Time dynamic evaluation's two phases on a trained run, to extrapolate to a whole split:
seconds per gradient-statistics segment (100 x 5 tokens) and per evaluation segment (1 x 5),
the latter after a warm-up of 10 segments.

    python results/eval-methods/time_dyneval.py RUN [--stat-batches 100] [--tokens 5000] [--dtype fp32]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from checkpoint import load_model  # noqa: E402
from dyneval import DYNAMIC_DEFAULTS, STAT_BATCH_SIZE, dynamic_evaluate, gradient_statistics  # noqa: E402

from data import batchify, load_corpus  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--stat-batches", type=int, default=100)
p.add_argument("--tokens", type=int, default=5000)
p.add_argument("--dtype", default="fp32")
args = p.parse_args()
model, ckpt = load_model(args.run)
corpus = load_corpus(ckpt["data"])
settings = DYNAMIC_DEFAULTS["wikitext-2"]
t0 = time.time()
ms = gradient_statistics(model, batchify(corpus.train, STAT_BATCH_SIZE), settings.bptt, args.stat_batches, args.dtype)
source = batchify(corpus.test[:args.tokens + 1], 1)
dynamic_evaluate(model, source[:51], ms, settings, args.dtype)  # warm-up: torch.compile's first call, if any
t1 = time.time()
loss, _ = dynamic_evaluate(model, source, ms, settings, args.dtype)
t2 = time.time()
segments = -(-(source.size(0) - 1) // settings.bptt)
stat_total = -(-(len(corpus.train) // STAT_BATCH_SIZE - 1) // settings.bptt)
test_segments = -(-(len(corpus.test) - 1) // settings.bptt)
per_stat, per_seg = (t1 - t0) / args.stat_batches, (t2 - t1) / segments
print(f"threads {torch.get_num_threads()} | dtype {args.dtype}")
print(f"gradient statistics: {per_stat * 1000:.1f} ms per segment of {STAT_BATCH_SIZE}x{settings.bptt} "
      f"({args.stat_batches} timed; all {stat_total} would take {per_stat * stat_total / 60:.1f} min)")
print(f"dynamic evaluation: {per_seg * 1000:.1f} ms per {settings.bptt}-token segment ({segments} timed); "
      f"WT2 test's {test_segments} segments would take {per_seg * test_segments / 60:.1f} min")
