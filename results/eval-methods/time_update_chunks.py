"""Time dynamic evaluation's update θ <- θ ⊙ keep + pull + step ⊙ g over a trained run's
parameters (made-up constants; only the memory traffic matters): the two addcmul passes over
whole tensors, against the same two passes done chunk by chunk, so that θ's chunk is still in
cache for the second pass (24 bytes a parameter read or written instead of 32). Versions run in
turn, median of 9 calls each, 3 rounds.

    python results/eval-methods/time_update_chunks.py RUN
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from checkpoint import load_model  # noqa: E402

from bench import median_ms  # noqa: E402

model, _ = load_model(sys.argv[1])
ps = [p.detach() for p in model.parameters()]
gs, keep, pull, step = ([torch.randn_like(p) * 1e-3 for p in ps] for _ in range(4))


def whole():
    for p, g, k, pl, s in zip(ps, gs, keep, pull, step, strict=True):
        torch.addcmul(pl, p, k, out=p)
        p.addcmul_(s, g)


def chunked(size):
    def chunks(ts):
        return [c for t in ts for c in t.view(-1).split(size)]
    cp, ck, cpl, cs = chunks(ps), chunks(keep), chunks(pull), chunks(step)

    def run():
        for p, g, k, pl, s in zip(cp, chunks(gs), ck, cpl, cs, strict=True):
            torch.addcmul(pl, p, k, out=p)
            p.addcmul_(s, g)
    return run


versions = {"whole tensors": whole}
versions.update({f"chunks of {s:,}": chunked(s) for s in (32_768, 131_072, 524_288, 2_097_152)})
print(f"{sum(p.numel() for p in ps):,} parameters, {torch.get_num_threads()} threads")
for r in range(3):
    print(f"round {r + 1}: " + " | ".join(f"{name} {median_ms(f):.1f} ms" for name, f in versions.items()), flush=True)
