"""The baseline's decoder products at its classic batch (700 x 650 x 33,278, bf16), two ways each,
interleaved call by call over many rounds, since this machine's matmul speed swings by 2x within
minutes (time_shapes-{1,2}.log): each round times every way once; medians of the per-round ratios.

    python results/bench-amx/baseline-decoder/ab_shapes.py [--rounds 30] [--rows 700] [--features 650]
"""
import argparse
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=30, help="rounds (default: 30)")
    p.add_argument("--rows", type=int, default=700, help="tokens per step (default: 700)")
    p.add_argument("--features", type=int, default=650, help="decoder input size (default: 650)")
    args = p.parse_args()
    n, d, v = args.rows, args.features, 33278
    bf = torch.bfloat16
    torch.manual_seed(0)
    x, w, probs = torch.randn(n, d).to(bf), torch.randn(v, d).to(bf), torch.randn(n, v).to(bf)
    ways = {
        "d features": {"probs @ w": lambda: probs @ w, "(w.t() @ probs.t()).t()": lambda: (w.t() @ probs.t()).t()},
        "d weight": {"(x.t() @ probs).t()": lambda: (x.t().contiguous() @ probs).t(),
                     "probs.t() @ x": lambda: probs.t() @ x},
    }
    print(f"threads {torch.get_num_threads()} | rows {n}, features {d}, vocab {v}, bf16 | {args.rounds} rounds")
    for product, fns in ways.items():
        times = {name: [] for name in fns}
        for r in range(args.rounds + 1):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if r:
                    times[name].append((time.perf_counter() - t0) * 1e3)
        (a, ta), (b, tb) = times.items()
        ratios = [y / x for x, y in zip(ta, tb, strict=True)]
        print(f"{product}: {a} median {statistics.median(ta):.1f} ms | {b} median {statistics.median(tb):.1f} ms | "
              f"second / first: median of the rounds' ratios {statistics.median(ratios):.3f}, "
              f"ratio of medians {statistics.median(tb) / statistics.median(ta):.3f}")


if __name__ == "__main__":
    main()
