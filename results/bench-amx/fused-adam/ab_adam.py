r"""Adam's step on CPU, PyTorch's default (for-loop) implementation against its fused kernel, as
train.make_optimizer now builds it: the optimizer step alone over AWD-LSTM WT2's parameters,
then whole bf16 training steps of the awd-lstm-adam preset (batch 100), the two optimizers
alternated in windows of 2 steps in one process, so that this machine's swings in speed hit
both alike.

    python results/bench-amx/fused-adam/ab_adam.py > results/bench-amx/fused-adam/ab_adam-1.log
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from config import model_config, resolve_config  # noqa: E402

import bench  # noqa: E402
from data import batchify, load_corpus  # noqa: E402
from model import build_model  # noqa: E402


def adam(params, cfg, fused):
    return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["wdecay"], betas=tuple(cfg["adam_betas"]),
                            fused=fused)


def report(title, times):
    print(title)
    for version, ts in times.items():
        print(f"  {version}: median {statistics.median(ts):,.1f} ({', '.join(f'{t:,.1f}' for t in ts)})")
    a, b = times.values()
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    print(f"  {' / '.join(reversed(times))}: median of the rounds' ratios {statistics.median(ratios):.3f}")


def main():
    cfg, _, _ = resolve_config(["--preset", "awd-lstm-adam", "--device", "cpu", "--dtype", "bf16"])
    corpus = load_corpus("wikitext-2")
    model = build_model(model_config(cfg, len(corpus.itos)), cfg["lstm_kernel"])
    params = list(model.parameters())
    print(f"awd-lstm-adam, bf16, {torch.get_num_threads()} threads, {sum(p.numel() for p in params):,} parameters")
    optimizers = {"for-loop": adam(params, cfg, None), "fused": adam(params, cfg, True)}

    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    times = {name: [] for name in optimizers}
    for r in range(12):
        for name, opt in optimizers.items():
            t0 = time.perf_counter()
            opt.step()
            if r > 1:
                times[name].append((time.perf_counter() - t0) * 1000)
    report("optimizer step alone, ms:", times)

    source = batchify(corpus.train, cfg["batch_size"], torch.device("cpu"))
    versions = {name: (lambda: None, opt) for name, opt in optimizers.items()}
    times = bench.alternate_training(model, cfg, source, versions, steps=2)
    report(f"whole training steps (batch {cfg['batch_size']} x {cfg['bptt']}), tokens/s:", times)


if __name__ == "__main__":
    main()
