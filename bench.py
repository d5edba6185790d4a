"""Training and evaluation throughput (tokens/s) of the word-level models.

    python bench.py --config lstm-small --json results/bench-lstm-small-cpu.json
    python bench.py --config awd-lstm-wt2 --steps 6 --windows 4 --warmup 2

Training is timed through train.py's own train_step (forward, backward, clip, SGD step, with
AR/TAR for AWD-LSTM) and evaluation through the forward pass under no_grad, on real WikiText-2
batches when the data are found (else random tokens with its vocabulary size). After a warm-up,
several windows of --steps batches are timed and the median window is reported. For awd-lstm-wt2
a plain model of identical sizes (nn.LSTM layers, tied decoder, no regularization) is timed in
the same process, so the ratio shows what the regularizers cost.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import train
from data import DataError, batchify, get_batch, load_corpus
from model import LMOutput, detach_hidden

WT2_VOCAB = 33_278
CONFIGS = {
    # pytorch/examples word_language_model defaults ("small")
    "lstm-small": {"model": "lstm", "emsize": 200, "nhid": 200, "nlayers": 2, "dropout": 0.2,
                   "tied": False, "batch_size": 20, "bptt": 35, "eval_batch_size": 10},
    # Zaremba et al.'s medium size, tied ("medium")
    "lstm-650-tied": {"model": "lstm", "emsize": 650, "nhid": 650, "nlayers": 2, "dropout": 0.5,
                      "tied": True, "batch_size": 20, "bptt": 35, "eval_batch_size": 10},
    # the full AWD-LSTM WikiText-2 preset (33.6M parameters), at its fixed base bptt
    "awd-lstm-wt2": {"preset": "awd-lstm-wt2"},
}


class PlainLSTM(nn.Module):
    """Embedding -> nn.LSTM layers of the given sizes -> tied decoder, with no regularization:
    the reference that AWD-LSTM's regularizers are timed against."""

    def __init__(self, vocab_size, layer_sizes):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, layer_sizes[0][0])
        self.rnns = nn.ModuleList(nn.LSTM(i, h) for i, h in layer_sizes)
        self.decoder = nn.Linear(layer_sizes[-1][1], vocab_size)
        self.decoder.weight = self.encoder.weight

    def forward(self, tokens, hidden):
        x, new_hidden = self.encoder(tokens), []
        for rnn, state in zip(self.rnns, hidden):
            x, state = rnn(x, state)
            new_hidden.append(state)
        return LMOutput(self.decoder(x), new_hidden, x, x)

    def init_hidden(self, batch_size):
        w = self.encoder.weight
        return [(w.new_zeros(1, batch_size, r.hidden_size), w.new_zeros(1, batch_size, r.hidden_size))
                for r in self.rnns]


def build(name, vocab_size):
    """(model, config for train_step with sizes, batch sizes and bptt) of a benchmark config."""
    spec = CONFIGS[name]
    if "preset" in spec:
        cfg, _, _ = train.resolve_config(["--preset", spec["preset"], "--device", "cpu"])
    else:
        cfg = {**spec, "clip": 0.25, "alpha": 0.0, "beta": 0.0}
    return train.new_model(cfg, vocab_size), cfg


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


def bench(model, cfg, train_tokens, steps, windows, warmup, device):
    """Median tokens/s of training (train.train_step) and of evaluation (forward, no_grad)."""
    torch.manual_seed(0)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    bptt, results = cfg["bptt"], {}
    for phase, bsz in (("train", cfg["batch_size"]), ("eval", cfg["eval_batch_size"])):
        source = batchify(train_tokens, bsz, device)
        nwin = (source.size(0) - 1) // bptt
        state = {"hidden": model.init_hidden(bsz)}

        def run_batch(i, source=source, nwin=nwin, state=state, phase=phase):
            x, y = get_batch(source, (i % nwin) * bptt, bptt)
            if phase == "train":
                _, state["hidden"] = train.train_step(model, x, y, state["hidden"], optimizer, cfg)
            else:
                with torch.no_grad():
                    state["hidden"] = model(x, detach_hidden(state["hidden"])).hidden

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
    device = torch.device(args.device)
    model, cfg = build(args.config, WT2_VOCAB)
    timing = (args.steps, args.windows, args.warmup, device)
    results = bench(model, cfg, tokens, *timing)
    lines = [("ours", results)]
    if args.config.startswith("awd"):
        plain = PlainLSTM(WT2_VOCAB, model.cfg.layer_sizes())
        results["plain"] = bench(plain, {**cfg, "alpha": 0.0, "beta": 0.0}, tokens, *timing)
        results["train_ratio_ours_to_plain"] = (results["train"]["tokens_per_s"]
                                                / results["plain"]["train"]["tokens_per_s"])
        lines.append(("plain", results["plain"]))
    report = {"config": args.config, **{k: v for k, v in cfg.items() if not isinstance(v, dict)},
              "device": args.device, "data": data, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": f"{platform.machine()}, {platform.processor() or '?'}",
              "steps": args.steps, "windows": args.windows, "warmup": args.warmup, **results}
    for name, r in lines:
        print(f"{args.config} ({name}) on {args.device}: train {r['train']['tokens_per_s']:,.0f} tokens/s | "
              f"eval {r['eval']['tokens_per_s']:,.0f} tokens/s | {r['parameters']:,} parameters")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
