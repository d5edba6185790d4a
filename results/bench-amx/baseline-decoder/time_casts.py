"""Casting the fp32 decoder weight (vocab, d) to bf16, as stored and transposed to (d, vocab), and the
bf16 gradient back to fp32, each way of asking for it: medians of 7 after a warm-up, in one process.

    python results/bench-amx/baseline-decoder/time_casts.py [--features 650]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench import median_ms  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--features", type=int, default=650, help="d (default: 650)")
    p.add_argument("--vocab", type=int, default=33278, help="vocabulary (default: 33,278)")
    args = p.parse_args()
    v, d = args.vocab, args.features
    bf = torch.bfloat16
    w = torch.randn(v, d)
    g = torch.randn(d, v).to(bf)  # a (d, vocab) bf16 product, as (x.T @ probs) gives it
    out_t = torch.empty(d, v, dtype=bf)
    out_g = torch.empty(v, d)
    cases = {
        "w.to(bf16)": lambda: w.to(bf),
        "w.t().contiguous() (fp32 transpose)": lambda: w.t().contiguous(),
        "w.t().to(bf16, contiguous)": lambda: w.t().to(bf, memory_format=torch.contiguous_format),
        "out_t.copy_(w.t())": lambda: out_t.copy_(w.t()),
        "w.to(bf16).t().contiguous()": lambda: w.to(bf).t().contiguous(),
        "w.t().contiguous().to(bf16)": lambda: w.t().contiguous().to(bf),
        "g.to(fp32)": lambda: g.to(torch.float32),
        "g.t().to(fp32, contiguous)": lambda: g.t().to(torch.float32, memory_format=torch.contiguous_format),
        "out_g.copy_(g.t())": lambda: out_g.copy_(g.t()),
    }
    print(f"threads {torch.get_num_threads()} | ({v}, {d}) = {v * d / 1e6:.1f}M entries")
    for name, fn in cases.items():
        ms = median_ms(fn, reps=7)
        print(f"{name:40s} {ms:8.1f} ms  {v * d / ms / 1e6:5.2f} G entries/s")


if __name__ == "__main__":
    main()
