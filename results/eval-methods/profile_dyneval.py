"""Where one dynamic-evaluation segment's time goes (batch 1, 5 tokens, fp32, the LSTM kernel
that dynamic evaluation uses), on a trained run: the forward with its score, the gradients, the
update; then torch.profiler's table over 20 segments.

    python results/eval-methods/profile_dyneval.py RUN
"""
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from checkpoint import load_model  # noqa: E402
from dyneval import DYNAMIC_DEFAULTS, DYNAMIC_LSTM_KERNEL, Adaptation  # noqa: E402
from kernels import Workspace  # noqa: E402

from data import batchify, get_batch, load_corpus  # noqa: E402
from model import detach_hidden  # noqa: E402


def segment(model, adaptation, source, i, hidden, workspace, parts):
    x, y = get_batch(source, i, 5)
    t0 = time.perf_counter()
    ce, _, _, out = model.scored_loss(x, y, detach_hidden(hidden), workspace)
    t1 = time.perf_counter()
    grads = torch.autograd.grad(ce, adaptation.params, allow_unused=True)
    t2 = time.perf_counter()
    adaptation.step(grads, workspace.take_weight_grad())
    t3 = time.perf_counter()
    for k, v in zip(("forward", "gradients", "update"), (t1 - t0, t2 - t1, t3 - t2), strict=True):
        parts[k] = parts.get(k, 0.0) + v
    return out.hidden


def main(run):
    model, ckpt = load_model(run)
    source = batchify(load_corpus(ckpt["data"]).test[:2001], 1)
    ms = {n: torch.rand_like(p) + 0.1 for n, p in model.named_parameters()}  # made up: timing only
    model.eval()
    adaptation = Adaptation(model, ms, DYNAMIC_DEFAULTS["wikitext-2"])
    workspace = Workspace(factor_weight_grad=True)  # as dynamic_evaluate keeps it
    with model.lstm_kernel(DYNAMIC_LSTM_KERNEL):
        profile_segments(model, adaptation, source, model.init_hidden(1), workspace)


def profile_segments(model, adaptation, source, hidden, workspace):
    parts = {}
    for k, i in enumerate(range(0, 1000, 5)):
        if k == 20:  # after warm-up
            parts = {}
        hidden = segment(model, adaptation, source, i, hidden, workspace, parts)
    print(" | ".join(f"{k} {v / 180 * 1000:.1f} ms" for k, v in parts.items()), "per segment")
    with profile() as prof:
        for i in range(1000, 1100, 5):
            hidden = segment(model, adaptation, source, i, hidden, workspace, {})
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main(sys.argv[1])
