"""Time dynamic evaluation's update over a trained run's parameters (made-up statistics; only the
memory traffic matters): dyneval.Adaptation's two eager addcmul passes over θ and three stored
constants (32 bytes a parameter read or written), against one pass compiled by torch.compile that
derives the decay and the step from MS itself: θ <- θ + min(λ MS / mean, 1) (θ0 - θ) - η g / (MS + ε),
reading θ, θ0, MS and g and writing θ (20 bytes a parameter). Versions in turn, median of 9 calls,
3 rounds.

    python results/eval-methods/time_update_fused.py RUN
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
gs = [torch.randn_like(p) * 1e-3 for p in ps]
ms = [torch.rand_like(p) * 1e-3 for p in ps]
theta0 = [p.clone() for p in ps]
lam_mean, lr, eps = 0.5, 1e-5, 1e-5
keep = [1 - (m * lam_mean).clamp(max=1) for m in ms]
pull = [(1 - k) * t for k, t in zip(keep, theta0, strict=True)]
step = [-lr / (m + eps) for m in ms]


def eager():
    for p, g, k, pl, s in zip(ps, gs, keep, pull, step, strict=True):
        torch.addcmul(pl, p, k, out=p)
        p.addcmul_(s, g)


def fused(ps, theta0, ms, gs, lam_mean, lr, eps):
    for p, t, m, g in zip(ps, theta0, ms, gs, strict=True):
        p.copy_(p + (m * lam_mean).clamp(max=1) * (t - p) - lr * g / (m + eps))


t0 = time.time()
compiled = torch.compile(fused, dynamic=False)
compiled(ps, theta0, ms, gs, lam_mean, lr, eps)
print(f"{sum(p.numel() for p in ps):,} parameters, {torch.get_num_threads()} threads; "
      f"torch.compile took {time.time() - t0:.1f} s")
for r in range(3):
    print(f"round {r + 1}: eager {median_ms(eager):.1f} ms | compiled from MS "
          f"{median_ms(lambda: compiled(ps, theta0, ms, gs, lam_mean, lr, eps)):.1f} ms", flush=True)
