r"""Whole bf16 training steps of a bench.py config, the decoder as it was and as it is, alternated
in one process (windows of a few steps each), so that this machine's swings in speed hit both
alike. "before": the decoder weight read from a contiguous transposed copy at every training
batch and the weight gradient as probs.T @ x; "after": kernels as they are now.

    python results/bench-amx/decoder-view/ab_step.py lstm-650-tied \
        > results/bench-amx/decoder-view/ab-lstm-650-tied-1.log
"""
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import bench  # noqa: E402
import kernels  # noqa: E402
from data import batchify, load_corpus  # noqa: E402

AFTER = {"CONTIGUOUS_MIN_ROWS": kernels.CONTIGUOUS_MIN_ROWS, "_weight_product": kernels._weight_product}
BEFORE = {"CONTIGUOUS_MIN_ROWS": 0, "_weight_product": lambda probs, x: probs.t() @ x}


def main():
    name = sys.argv[1]
    corpus = load_corpus("wikitext-2")
    model, cfg = bench.build(name, len(corpus.itos), "bf16")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    source = batchify(corpus.train, cfg["batch_size"], torch.device("cpu"))

    def patch(values):
        def apply():
            for key, value in values.items():
                setattr(kernels, key, value)
        return apply

    times = bench.alternate_training(model, cfg, source, {"before": (patch(BEFORE), optimizer),
                                                          "after": (patch(AFTER), optimizer)})
    print(f"{name}, bf16, {torch.get_num_threads()} threads, {len(times['after'])} rounds of 3 steps per version, "
          "tokens/s")
    for version, ts in times.items():
        print(f"{version}: median {statistics.median(ts):,.0f} ({', '.join(f'{t:,.0f}' for t in ts)})")
    ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
    print(f"after / before: median of the rounds' ratios {statistics.median(ratios):.3f}, "
          f"ratio of medians {statistics.median(times['after']) / statistics.median(times['before']):.3f}")


if __name__ == "__main__":
    main()
