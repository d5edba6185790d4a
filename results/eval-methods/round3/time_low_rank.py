"""The decoder weight's dynamic-evaluation update alone, at the 2-hour baseline's shapes (33,278 x
650, 5 tokens; made-up values): the rank-5 gradient by sgemm into a kept buffer and then the
compiled one-pass update (the code before kernels.LowRankGradient), against the compiled update
that forms the gradient from its parts (dyneval._update_in_one_pass given a pair). Alternated, 15
rounds of 10 calls each; then the sgemm and the update of the first way alone.

    python results/eval-methods/round3/time_low_rank.py
"""
import statistics
import time

import torch
from common import median_ms
from dyneval import _update_in_one_pass

torch.manual_seed(0)
vocab, d, k = 33278, 650, 5
theta, ms = torch.randn(vocab, d), torch.rand(vocab, d) + 0.1
theta0 = theta.clone()
left, right, grad = torch.randn(k, vocab), torch.randn(k, d), torch.empty(vocab, d)
scalars = [torch.tensor(v) for v in (1e-3, 3e-5, 1e-5)]  # lam / mean MS, lr, epsilon
update = torch.compile(_update_in_one_pass, dynamic=False)


def sgemm():
    torch.mm(left.t(), right, out=grad)


def dense_update():
    update([theta], [theta0], [ms], [grad], *scalars)


def dense():
    sgemm()
    dense_update()


def low_rank():
    update([theta], [theta0], [ms], [(left, right)], *scalars)


start = theta.clone()
dense()
after_dense = theta.clone()
theta.copy_(start)
low_rank()
print(f"largest difference of the two updates: {(after_dense - theta).abs().max().item():.2e} "
      f"(of a step of up to {(after_dense - start).abs().max().item():.2e})")
times = {"sgemm + update": [], "low-rank update": []}
for _ in range(15):
    for name, fn in (("sgemm + update", dense), ("low-rank update", low_rank)):
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        times[name].append((time.perf_counter() - t0) / 10 * 1e3)
for name, ms_list in times.items():
    print(f"{name}: {statistics.median(ms_list):.1f} ms (median of 15)")
print(f"sgemm alone: {median_ms(sgemm):.1f} ms; the update of a dense gradient alone: {median_ms(dense_update):.1f} ms")
