"""Dynamic evaluation's time per 5-token segment with the update walking the parameters in the
model's order against the reverse order (so that the tensors the next forward pass reads first are
the last written, and may still be in the CPU's last-level cache), alternated in one process: one
model, one set of statistics, the same test tokens, `--rounds` rounds of `--tokens` tokens each way.

    python results/eval-methods/ab_order.py RUN [--rounds 6] [--tokens 500]
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


class Reversed(dyneval.Adaptation):
    def __init__(self, model, ms, settings):
        super().__init__(model, ms, settings)
        self.params, self.ms, self.theta0 = self.params[::-1], self.ms[::-1], self.theta0[::-1]


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
modes = {"model order": dyneval.Adaptation, "reversed": Reversed}
original = dyneval.Adaptation
results = {}
for mode, cls in modes.items():  # warm-up, and the compiles
    dyneval.Adaptation = cls
    results[mode] = dynamic_evaluate(model, source[:51], ms, settings)
times = {mode: [] for mode in modes}
print(f"{torch.get_num_threads()} threads, {segments} segments a round")
for r in range(args.rounds):
    for mode, cls in modes.items():
        dyneval.Adaptation = cls
        t0 = time.perf_counter()
        results[mode] = dynamic_evaluate(model, source, ms, settings)[0]
        times[mode].append((time.perf_counter() - t0) / segments * 1000)
    print(f"round {r + 1}: " + " | ".join(f"{m} {t[-1]:.1f} ms" for m, t in times.items()), flush=True)
dyneval.Adaptation = original
print("medians: " + " | ".join(f"{m} {statistics.median(t):.1f} ms" for m, t in times.items()))
ratios = [b / a for a, b in zip(times["model order"], times["reversed"], strict=True)]
print(f"reversed / model order: median of the rounds' ratios {statistics.median(ratios):.3f}, "
      f"ratio of medians {statistics.median(times['reversed']) / statistics.median(times['model order']):.3f}")
print("loss: " + " | ".join(f"{m} {v:.6f}" for m, v in results.items()))
