r"""Whole bf16 training steps of a bench.py config, the decoder as it was and as it is, alternated
in one process (windows of a few steps each), so that this machine's swings in speed hit both
alike. "before": the decoder weight read from a contiguous transposed copy at every training
batch and the weight gradient as probs.T @ x; "after": kernels as they are now.

    python results/bench-amx/decoder-view/ab_step.py lstm-650-tied \
        > results/bench-amx/decoder-view/ab-lstm-650-tied-1.log
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import kernels  # noqa: E402

import bench  # noqa: E402

AFTER = {"CONTIGUOUS_MIN_ROWS": kernels.CONTIGUOUS_MIN_ROWS, "_weight_product": kernels._weight_product}
BEFORE = {"CONTIGUOUS_MIN_ROWS": 0, "_weight_product": lambda probs, x: probs.t() @ x}


def main():
    def patch(values):
        def apply():
            for key, value in values.items():
                setattr(kernels, key, value)
        return apply

    bench.compare_training(sys.argv[1], {"before": patch(BEFORE), "after": patch(AFTER)})


if __name__ == "__main__":
    main()
