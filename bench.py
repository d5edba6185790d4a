"""Training and evaluation throughput (tokens/s) of the word-level models.

    python bench.py --config lstm-small --json results/bench-lstm-small-cpu.json

Training is timed through train.py's own train_step (forward, backward, clip, SGD step) and
evaluation through evaluate.py's forward pass under no_grad, on real WikiText-2 batches when
the data are found (else random tokens with its vocabulary size). After a warm-up, several
windows of --steps batches are timed and the median window is reported.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from data import DataError, batchify, get_batch, load_corpus
from model import ModelConfig, build_model, detach_hidden
from train import train_step

WT2_VOCAB = 33_278
CONFIGS = {
    # pytorch/examples word_language_model defaults ("small")
    "lstm-small": dict(model="lstm", emsize=200, nhid=200, nlayers=2, dropout=0.2, tied=False,
                       batch_size=20, bptt=35, eval_batch_size=10),
    # Zaremba et al.'s medium size, tied ("medium")
    "lstm-650-tied": dict(model="lstm", emsize=650, nhid=650, nlayers=2, dropout=0.5, tied=True,
                          batch_size=20, bptt=35, eval_batch_size=10),
}


def time_windows(run_batch, steps, windows, warmup):
    """Seconds of each of `windows` windows of `steps` calls, after `warmup` calls."""
    for i in range(warmup):
        run_batch(i)
    times = []
    for w in range(windows):
        t0 = time.perf_counter()
        for i in range(steps):
            run_batch(warmup + w * steps + i)
        times.append(time.perf_counter() - t0)
    return times


def bench(cfg, train_tokens, steps, windows, warmup, device):
    model_cfg = ModelConfig(vocab_size=WT2_VOCAB, **{k: cfg[k] for k in
                            ("model", "emsize", "nhid", "nlayers", "dropout", "tied")})
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    bptt = cfg["bptt"]
    results = {}
    for phase, bsz in (("train", cfg["batch_size"]), ("eval", cfg["eval_batch_size"])):
        source = batchify(train_tokens, bsz, device)
        nwin = (source.size(0) - 1) // bptt
        state = {"hidden": model.init_hidden(bsz)}

        def run_batch(i, source=source, nwin=nwin, state=state, phase=phase):
            x, y = get_batch(source, (i % nwin) * bptt, bptt)
            if phase == "train":
                _, state["hidden"] = train_step(model, x, y, state["hidden"], optimizer, clip=0.25)
            else:
                with torch.no_grad():
                    _, state["hidden"] = model(x, detach_hidden(state["hidden"]))

        model.train(phase == "train")
        times = time_windows(run_batch, steps, windows, warmup)
        tokens = steps * bsz * bptt
        results[phase] = {
            "tokens_per_s": tokens / statistics.median(times),
            "window_tokens_per_s": [round(tokens / t, 1) for t in times],
            "batch_size": bsz, "bptt": bptt,
        }
    results["parameters"] = sum(p.numel() for p in model.parameters())
    return results


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=CONFIGS, default="lstm-small", help="model size to time (default: lstm-small)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parent.parent / "shared" / "data" / "wikitext-2"),
                   help="corpus whose training batches are fed (default: ../shared/data/wikitext-2; "
                        "random tokens if missing)")
    p.add_argument("--steps", type=int, default=30, help="batches per timed window (default: 30)")
    p.add_argument("--windows", type=int, default=5, help="timed windows; the median is reported (default: 5)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first (default: 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results to FILE")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        tokens, data = load_corpus(args.data).train, args.data
    except DataError:
        print(f"note: {args.data} not found; timing on random tokens", file=sys.stderr)
        tokens, data = torch.randint(0, WT2_VOCAB, (200_000,)), "random"
    cfg = CONFIGS[args.config]
    results = bench(cfg, tokens, args.steps, args.windows, args.warmup, torch.device(args.device))
    report = {"config": args.config, **cfg, "device": args.device, "data": data,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or '?'}",
              "steps": args.steps, "windows": args.windows, "warmup": args.warmup, **results}
    print(f"{args.config} on {args.device}: train {results['train']['tokens_per_s']:,.0f} tokens/s | "
          f"eval {results['eval']['tokens_per_s']:,.0f} tokens/s | {results['parameters']:,} parameters")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
