"""Time the chunked decoder at the AWD-LSTM WT2 shape in bf16 (400 features, 33,278 words): the
training loss, forward + backward, on a batch of 80 x 70 tokens (`loss`, the default), or the
evaluation scores on one 20,000-token call (`scores`). Two versions of the code run interleaved
in one process, so that the machine's drift hits both alike. Each TREE is a checkout of this
repository; the functions come from its kernels.py (or from model.py in trees before kernels.py).

    git worktree add /tmp/base HEAD
    python results/time_decoder.py /tmp/base . > results/decoder/time_decoder-1.log
    python results/time_decoder.py /tmp/base . scores > results/decoder/time_scores-1.log
"""
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch


def load(tree):
    """The tree's decoder module (kernels.py, or model.py before kernels.py existed)."""
    tree = Path(tree).resolve()
    sys.path.insert(0, str(tree))
    name = "kernels" if (tree / "kernels.py").exists() else "model"
    spec = importlib.util.spec_from_file_location(f"{name}_{len(sys.modules)}", tree / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path.pop(0)
    return module


def main():
    trees, what = sys.argv[1:3], (sys.argv[3:] or ["loss"])[0]
    modules = {tree: load(tree) for tree in trees}
    workspaces = {tree: m.Workspace() for tree, m in modules.items()}
    torch.manual_seed(0)
    tokens, d, vocab = (80 * 70 if what == "loss" else 20_000), 400, 33_278
    features = torch.randn(tokens, d).bfloat16()
    weight = (torch.randn(vocab, d) * 0.1).requires_grad_()
    bias = torch.zeros(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    times = {tree: [] for tree in trees}
    for rep in range(11):
        for tree, module in modules.items():
            f = features.detach().requires_grad_()
            weight.grad = bias.grad = None
            t0 = time.perf_counter()
            if what == "loss":
                module.linear_cross_entropy(f, weight, bias, targets, workspace=workspaces[tree]).backward()
            else:
                module.linear_scores(f, weight, bias, targets, workspace=workspaces[tree])
            if rep:  # the first round warms up
                times[tree].append(time.perf_counter() - t0)
    print(f"{what}: {torch.__version__}, {torch.get_num_threads()} threads, {tokens} tokens x {vocab} words, bf16")
    for tree, ts in times.items():
        print(f"{tree}: median {statistics.median(ts) * 1000:.0f} ms ({', '.join(f'{t * 1000:.0f}' for t in ts)})")
    a, b = (statistics.median(times[t]) for t in trees)
    print(f"second / first: {b / a:.3f}")


if __name__ == "__main__":
    main()
