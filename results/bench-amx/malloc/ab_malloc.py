r"""Whole bf16 training steps (or, with --eval, evaluation calls of 20,000 tokens at the config's
evaluation batch) of a bench.py config with glibc's default malloc against a malloc that keeps
freed memory (no mmap for large blocks, no trimming of the heap), alternated in one process
(rounds of a few steps each, settings switched by mallopt between them). With the defaults every
block above 32 MB (the bf16 copy of the decoder weight, its fp32 gradient) is a fresh mapping that
is page-faulted in again on every step.

    python results/bench-amx/malloc/ab_malloc.py lstm-650-tied [ROUNDS] \
        > results/bench-amx/malloc/ab-lstm-650-tied-1.log
    python results/bench-amx/malloc/ab_malloc.py awd-lstm-wt2 10 --eval
"""
import ctypes
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from kernels import Workspace  # noqa: E402

import bench  # noqa: E402
from data import batchify, get_batch, load_corpus  # noqa: E402
from evaluate import eval_window, score_batch  # noqa: E402

LIBC = ctypes.CDLL("libc.so.6")
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
KEEP = {M_TRIM_THRESHOLD: 1 << 40, M_MMAP_MAX: 0}


def settings(values):
    def apply():
        for key, value in values.items():
            assert LIBC.mallopt(key, ctypes.c_int(min(value, 2 ** 31 - 1))) == 1
    return apply


@torch.no_grad()
def compare_eval(name, setups, rounds, calls=1):
    """Tokens/s of evaluate.score_batch on WikiText-2's valid split under each setup, alternated."""
    corpus = load_corpus("wikitext-2")
    model, cfg = bench.build(name, len(corpus.itos), "bf16")
    model.eval()
    batch = cfg["eval_batch_size"]
    window, source = eval_window(batch), batchify(corpus.valid, batch, torch.device("cpu"))
    hidden, workspace, position = model.init_hidden(batch), Workspace(), 0
    times = {version: [] for version in setups}
    for r in range(rounds + 1):
        for version, setup in setups.items():
            setup()
            t0 = time.perf_counter()
            for _ in range(calls):
                x, y = get_batch(source, position, window)
                position = (position + window) % (source.size(0) - window - 1)
                hidden = score_batch(model, x, y, hidden, "bf16", workspace)[2]
            if r:
                times[version].append(calls * x.numel() / (time.perf_counter() - t0))
    print(f"{name}, bf16 evaluation, batch {batch}, {torch.get_num_threads()} threads, {rounds} rounds of {calls} "
          f"calls per version, tokens/s")
    print("\n".join(bench.alternation_report(times)))


def main():
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    setups = {"before": settings(DEFAULT), "after": settings(KEEP)}
    if "--eval" in sys.argv:
        compare_eval(sys.argv[1], setups, rounds)
    else:
        bench.compare_training(sys.argv[1], setups, rounds=rounds)


if __name__ == "__main__":
    main()
