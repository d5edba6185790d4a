"""Dynamic evaluation's matrix-vector products at batch 1 in fp32 (AWD-LSTM WT2's 4,600 x 1,150
recurrent weight, 21 MB), each way it can be asked for, against the bytes they must read:
medians of 50 calls after a warm-up, in one process.

    python results/eval-methods/matvec/time_matvec.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench import median_ms  # noqa: E402


def main():
    torch.manual_seed(0)
    rows, cols = 4600, 1150
    w = torch.randn(rows, cols)
    x, d = torch.randn(1, cols), torch.randn(1, rows)
    out_r, out_c = torch.empty(1, rows), torch.empty(1, cols)
    x5, d5 = torch.randn(5, cols), torch.randn(5, rows)
    grad = torch.empty(rows, cols)
    mb = w.numel() * 4 / 1e6
    cases = {
        "x @ w.t()  (forward step)": lambda: x @ w.t(),
        "torch.mv(w, x[0])": lambda: torch.mv(w, x[0]),
        "mm(x, w.t(), out=)": lambda: torch.mm(x, w.t(), out=out_r),
        "d @ w  (backward step)": lambda: d @ w,
        "torch.mv(w.t(), d[0])": lambda: torch.mv(w.t(), d[0]),
        "mm(d, w, out=)": lambda: torch.mm(d, w, out=out_c),
        "d5.t() @ x5  (weight gradient, new tensor)": lambda: d5.t() @ x5,
        "mm(d5.t(), x5, out=kept)": lambda: torch.mm(d5.t(), x5, out=grad),
        "w.sum()  (a read of w)": lambda: w.sum(),
        "grad.copy_(w)  (a read and a write)": lambda: grad.copy_(w),
    }
    print(f"threads {torch.get_num_threads()} | weight {rows} x {cols} fp32, {mb:.1f} MB")
    for name, fn in cases.items():
        us = median_ms(fn, reps=50) * 1e3
        print(f"{name:45s} {us:8.0f} us  {mb / us * 1e3:6.1f} GB/s of the weight's bytes")


if __name__ == "__main__":
    main()
