"""Dynamic evaluation's time per 5-token segment with the eager update against the compiled one
(dyneval.Adaptation), alternated in one process: one model, one set of statistics, the same
test tokens, `--rounds` rounds of `--tokens` tokens each way. Each round's time less that of
making the Adaptation once (its setup, timed just before) per segment; each round and the medians.

    python results/eval-methods/ab_update.py RUN [--rounds 6] [--tokens 500]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import dyneval  # noqa: E402
from checkpoint import load_model  # noqa: E402
from dyneval import DYNAMIC_DEFAULTS, STAT_BATCH_SIZE, dynamic_evaluate, gradient_statistics  # noqa: E402

from data import batchify, load_corpus  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--rounds", type=int, default=6)
p.add_argument("--tokens", type=int, default=500)
args = p.parse_args()
model, ckpt = load_model(args.run)
corpus = load_corpus(ckpt["data"])
settings = DYNAMIC_DEFAULTS["wikitext-2"]
ms = gradient_statistics(model, batchify(corpus.train, STAT_BATCH_SIZE), settings.bptt, 2)
source = batchify(corpus.test[:args.tokens + 1], 1)
segments = len(dyneval.segments(source, settings.bptt))
modes = {"eager": 1 << 62, "compiled": 0}  # COMPILED_UPDATE_MIN_PARAMS
results = {}
for mode, threshold in modes.items():  # warm-up, and the compile
    dyneval.COMPILED_UPDATE_MIN_PARAMS = threshold
    results[mode] = dynamic_evaluate(model, source[:51], ms, settings)
times = {mode: [] for mode in modes}
print(f"{torch.get_num_threads()} threads, {segments} segments a round")
for r in range(args.rounds):
    for mode, threshold in modes.items():
        dyneval.COMPILED_UPDATE_MIN_PARAMS = threshold
        t0 = time.perf_counter()
        dyneval.Adaptation(model, ms, settings).restore()  # the setup alone: θ0 and any constants
        t1 = time.perf_counter()
        results[mode] = dynamic_evaluate(model, source, ms, settings)[0]
        t2 = time.perf_counter()
        times[mode].append((t2 - t1 - (t1 - t0)) / segments * 1000)
    print(f"round {r + 1}: " + " | ".join(f"{m} {t[-1]:.1f} ms" for m, t in times.items()), flush=True)
print("medians: " + " | ".join(f"{m} {statistics.median(t):.1f} ms" for m, t in times.items()))
ratios = [c / e for c, e in zip(times["compiled"], times["eager"], strict=True)]
print(f"compiled / eager: median of the rounds' ratios {statistics.median(ratios):.3f}, "
      f"ratio of medians {statistics.median(times['compiled']) / statistics.median(times['eager']):.3f}")
print("loss: " + " | ".join(f"{m} {v:.6f}" for m, v in results.items()))
