"""Time dynamic evaluation's update θ <- θ ⊙ keep + pull + step ⊙ g over a trained run's
parameters (made-up constants; only the memory traffic matters): as dyneval.Adaptation does it
(two addcmul passes), with torch._foreach ops, and fused by torch.compile. Median of 9 calls.

    python results/eval-methods/time_update.py RUN
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from checkpoint import load_model  # noqa: E402

from bench import median_ms  # noqa: E402

model, _ = load_model(sys.argv[1])
ps = [p.detach() for p in model.parameters()]
gs, keep, pull, step = ([torch.randn_like(p) for p in ps] for _ in range(4))


def eager():
    for p, g, k, pl, s in zip(ps, gs, keep, pull, step, strict=True):
        torch.addcmul(pl, p, k, out=p)
        p.addcmul_(s, g)


def foreach():
    torch._foreach_mul_(ps, keep)
    torch._foreach_add_(ps, pull)
    torch._foreach_addcmul_(ps, step, gs)


def fused(ps, gs, keep, pull, step):
    for p, g, k, pl, s in zip(ps, gs, keep, pull, step, strict=True):
        p.copy_(p * k + pl + s * g)


t0 = time.time()
compiled = torch.compile(fused)
compiled(ps, gs, keep, pull, step)
print(f"{sum(p.numel() for p in ps):,} parameters; torch.compile took {time.time() - t0:.1f} s")
print(f"eager (dyneval.Adaptation): {median_ms(eager):.1f} ms")
print(f"foreach: {median_ms(foreach):.1f} ms")
print(f"compiled: {median_ms(lambda: compiled(ps, gs, keep, pull, step)):.1f} ms")
