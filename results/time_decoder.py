"""Time the chunked decoder in bf16: the training loss, forward + backward, at the AWD-LSTM WT2
shape (80 x 70 tokens, 400 features, 33,278 words; `loss`, the default), at the 2x650 baseline's
(20 x 35 tokens, 650 features; `loss-650`) or at 1,400 and 2,800 tokens of 400 features
(`loss-1400`, `loss-2800`), or the evaluation scores of one 20,000-token call at the AWD-LSTM
shape (`scores`). Several versions of the code run interleaved in one process, so that the
machine's drift hits all alike. Each TREE is a checkout of this repository; the functions come from
its kernels.py (or from model.py in trees before kernels.py).

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
    shapes = {"loss": (80 * 70, 400), "loss-650": (20 * 35, 650), "scores": (20_000, 400),  # tokens, features
              "loss-1400": (1400, 400), "loss-2800": (2800, 400)}
    trees = sys.argv[1:]
    what = trees.pop() if trees[-1] in shapes else "loss"
    modules = {tree: load(tree) for tree in trees}
    workspaces = {tree: m.Workspace() for tree, m in modules.items()}
    torch.manual_seed(0)
    (tokens, d), vocab = shapes[what], 33_278
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
            if what.startswith("loss"):
                module.linear_cross_entropy(f, weight, bias, targets, workspace=workspaces[tree]).backward()
            else:
                module.linear_scores(f, weight, bias, targets, workspace=workspaces[tree])
            if rep:  # the first round warms up
                times[tree].append(time.perf_counter() - t0)
    print(f"{what}: {torch.__version__}, {torch.get_num_threads()} threads, {tokens} tokens x {vocab} words, bf16")
    for tree, ts in times.items():
        print(f"{tree}: median {statistics.median(ts) * 1000:.0f} ms ({', '.join(f'{t * 1000:.0f}' for t in ts)})")
    first = statistics.median(times[trees[0]])
    for tree in trees[1:]:
        print(f"{tree} / {trees[0]}: {statistics.median(times[tree]) / first:.3f}")


if __name__ == "__main__":
    main()
