"""Time the chunked decoder loss (forward + backward) at the AWD-LSTM WT2 shape, bf16: the
version before the fp32-accurate target gradient (git 5e5504f, model.linear_cross_entropy) against
the current kernels.linear_cross_entropy, interleaved in one process.

    git worktree add /tmp/base 5e5504f
    python results/bf16-loss-fix/time_loss.py /tmp/base > results/bf16-loss-fix/time_loss.log
"""
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import kernels  # noqa: E402


def load_old(base):
    spec = importlib.util.spec_from_file_location("old_model", Path(base) / "model.py")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    return old


def step(fn, features, weight, bias, targets, workspace):
    f = features.detach().requires_grad_()
    weight.grad = bias.grad = None
    fn(f, weight, bias, targets, workspace=workspace).backward()


def main():
    old = load_old(sys.argv[1])
    torch.manual_seed(0)
    tokens, d, vocab = 80 * 70, 400, 33_278
    features = torch.randn(tokens, d).bfloat16()
    weight = (torch.randn(vocab, d) * 0.1).requires_grad_()
    bias = torch.zeros(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    versions = {"before": (old.linear_cross_entropy, old.Workspace()),
                "after": (kernels.linear_cross_entropy, kernels.Workspace())}
    times = {name: [] for name in versions}
    for rep in range(8):
        for name, (fn, workspace) in versions.items():
            t0 = time.perf_counter()
            step(fn, features, weight, bias, targets, workspace)
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    print(f"{torch.__version__}, {torch.get_num_threads()} threads, {tokens} tokens x {vocab} words, bf16")
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts) * 1000:.0f} ms ({', '.join(f'{t * 1000:.0f}' for t in ts)})")
    ratio = statistics.median(times["after"]) / statistics.median(times["before"])
    print(f"after / before: {ratio:.3f}")


if __name__ == "__main__":
    main()
