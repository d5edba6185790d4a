"""The baseline's decoder matmuls at its classic batch (700 tokens, 650 features, 33,278 words), in
bf16, each way of asking for them, with the square matmuls that bench.py takes as a ceiling:
medians of 7 calls after a warm-up, in one process, GFLOP/s.

    python results/bench-amx/baseline-decoder/time_shapes.py [--rows 700] [--features 650]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench import median_ms  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=700, help="tokens per step (default: 700)")
    p.add_argument("--features", type=int, default=650, help="decoder input size (default: 650)")
    p.add_argument("--vocab", type=int, default=33278, help="vocabulary (default: 33,278)")
    args = p.parse_args()
    n, d, v = args.rows, args.features, args.vocab
    bf = torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(n, d).to(bf)
    w = torch.randn(v, d).to(bf)  # the decoder weight as stored, (vocab, d)
    w_t = w.t().contiguous()  # its transposed copy, (d, vocab)
    probs = torch.randn(n, v).to(bf)  # the softmax gradient, (rows, vocab)
    probs_t = probs.t().contiguous()
    out_nd = torch.empty(n, d, dtype=bf)
    flop = 2 * n * d * v
    cases = {
        "logits: x @ w_t (contiguous copy)": lambda: x @ w_t,
        "logits: x @ w.t() (view)": lambda: x @ w.t(),
        "d features: probs @ w": lambda: probs @ w,
        "d features: mm(probs, w, out=)": lambda: torch.mm(probs, w, out=out_nd),
        "d features: (w_t @ probs.t()).t()": lambda: (w_t @ probs.t()).t(),
        "d features: (w.t() @ probs.t()).t() (views)": lambda: (w.t() @ probs.t()).t(),
        "d features: (w.t() @ probs_t).t()": lambda: (w.t() @ probs_t).t(),
        "d features: K split in 4, summed": lambda: sum(probs[:, k:k + v // 4 + 1] @ w[k:k + v // 4 + 1]
                                                      for k in range(0, v, v // 4 + 1)),
        "d weight: (x.t() @ probs) (vocab last)": lambda: x.t() @ probs,
        "d weight: probs.t() @ x": lambda: probs.t() @ x,
        "d weight: probs_t @ x (contiguous)": lambda: probs_t @ x,
        "transpose copy of probs": lambda: probs.t().contiguous(),
    }
    print(f"threads {torch.get_num_threads()} | rows {n}, features {d}, vocab {v}, bf16 | {flop / 1e9:.1f} GFLOP each")
    for name, fn in cases.items():
        ms = median_ms(fn, reps=7)
        rate = "" if name.startswith("transpose") else f"{flop / ms / 1e6:7.0f} GFLOP/s"
        print(f"{name:40s} {ms:8.1f} ms {rate}")
    for size in (2048, 4096):
        a, b = torch.randn(size, size).to(bf), torch.randn(size, size).to(bf)
        ms = median_ms(lambda a=a, b=b: a @ b, reps=7)
        print(f"{f'square {size}':40s} {ms:8.1f} ms {2 * size ** 3 / ms / 1e6:7.0f} GFLOP/s")


if __name__ == "__main__":
    main()
