"""Training and evaluation throughput of the word-level models, against a plain nn.LSTM model.

    python bench.py --config awd-lstm-wt2 --dtype fp32 bf16 --json bench-awd.json
    python bench.py --config lstm-small --dtype fp32 bf16 --device cuda

Training is timed through the training loop's own train_step (lm/training.py: forward, backward,
clip, SGD step, with AR/TAR for AWD-LSTM) and evaluation through lm/scoring.py's score_batch
(forward and scoring under no_grad, in evaluate.py's long windows at the config's evaluation batch
size; the Transformer's in its sliding window's calls, 16 windows of its context), on real
WikiText-2 batches when the data are found (else random tokens with its vocabulary size). After a
warm-up, several windows of --steps batches are timed and the median window is reported. In the
same process, for each --dtype, a plain model of identical sizes (nn.LSTM layers, same decoder and
tying, no regularization) is timed the same way, so the ratio ours/plain shows what the
regularizers cost (for the QRNN: what it gains over an LSTM of its sizes; the Transformer has none).

Also reported: peak memory of each phase (CPU: the process's peak resident set, reset before
the phase; CUDA: peak allocated), model FLOPs per token (matmuls only: 2*4h(i+h) per LSTM layer
and 2*d*vocab for the decoder, forward; training counts 3x forward), the achieved FLOP/s and its
fraction of a matmul ceiling measured here (the best of square 2048 and 4096 matmuls and of the
model's own GEMM shapes, forward and backward, in the same dtype, each also reported), the
shape bound (the training FLOP/s that those shapes allow at their measured speeds if nothing else
took any time: a step made of these matmuls cannot run faster here), and the ratio to
the reference throughputs in REFERENCE.
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

from data import DataError, batchify, get_batch, load_corpus
from lm import cli
from lm.config import model_config, resolve_config
from lm.decoder import Workspace
from lm.defaults import base_defaults
from lm.flops import model_flops, shape_bound
from lm.head import LanguageModel, LMOutput
from lm.memory import keep_freed_memory
from lm.models import build_model
from lm.optim import LossScaler
from lm.precision import DTYPES, HALF
from lm.recurrence import LSTM_KERNELS
from lm.scoring import eval_window, score_batch
from lm.training import train_step

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
    # the original code's WikiText-2 QRNN, against an nn.LSTM model of its layer sizes
    "qrnn-wt2": {"preset": "qrnn-wt2"},
    # the Transformer baseline (no plain model to time it against)
    "transformer-wt2": {"preset": "transformer-wt2"},
}
# Tokens/s of other code on this project's 2-core CPU (AMD EPYC, torch 2.13), as given in the
# speed issue, and the targets set there for ours.
REFERENCE = {
    "awd-lstm-wt2": {"source": "the original AWD-LSTM code at its WT2 config",
                     "train": 760, "eval": 2300, "target_train": 1500, "target_eval": 4600},
    "lstm-small": {"source": "pytorch/examples word_language_model", "train": 2150, "target_train": 3200},
}


class PlainLSTM(LanguageModel):
    """Embedding -> nn.LSTM layers of the given sizes -> decoder (tied or not), with no
    regularization: the reference that our models' regularizers are timed against."""

    def __init__(self, vocab_size, layer_sizes, tied):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, layer_sizes[0][0])
        self.rnns = nn.ModuleList(nn.LSTM(i, h) for i, h in layer_sizes)
        self.decoder = nn.Linear(layer_sizes[-1][1], vocab_size)
        if tied:
            self.decoder.weight = self.encoder.weight

    def features(self, tokens, hidden, tied=None):
        """A dense lookup: tied is left unused, so the decoder returns its gradient itself."""
        x, new_hidden = self.encoder(tokens), []
        for rnn, state in zip(self.rnns, hidden, strict=True):
            x, state = rnn(x, state)
            new_hidden.append(state)
        return LMOutput(None, new_hidden, x, x)

    def init_hidden(self, batch_size):
        w = self.encoder.weight
        return [(w.new_zeros(1, batch_size, r.hidden_size), w.new_zeros(1, batch_size, r.hidden_size))
                for r in self.rnns]


def build(name, vocab_size, dtype, lstm_kernel="auto", batch_size=None):
    """(model, config for train_step with sizes, batch sizes, bptt and dtype) of a benchmark config;
    batch_size, if given, replaces its training batch size."""
    spec = CONFIGS[name]
    if "preset" in spec:
        kernel = ["--lstm-kernel", lstm_kernel] if lstm_kernel != "auto" else []
        cfg, _, _ = resolve_config(["--preset", spec["preset"], "--device", "cpu", "--dtype", dtype, *kernel])
    else:
        cfg = {**base_defaults("baseline", False), **spec, "clip": 0.25, "alpha": 0.0, "beta": 0.0, "dtype": dtype,
               "lstm_kernel": lstm_kernel}
    cfg = {**cfg, "batch_size": batch_size or cfg["batch_size"]}
    return build_model(model_config(cfg, vocab_size), lstm_kernel), cfg


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_windows(run_batch, steps, windows, warmup, device):
    """Seconds of each of `windows` windows of `steps` calls, after `warmup` calls."""
    for i in range(warmup):
        run_batch(i)
    times = []
    for w in range(windows):
        synchronize(device)
        t0 = time.perf_counter()
        for i in range(steps):
            run_batch(warmup + w * steps + i)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def reset_peak_memory(device):
    """Start a new peak-memory measurement; False where it cannot be done."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def matmul_speed(device, dtype, m, k, n, reps=5):
    """Median FLOP/s of an (m, k) x (k, n) matmul in dtype on device."""
    torch_dtype = HALF.get(dtype, torch.float32)
    a = torch.randn(m, k, device=device).to(torch_dtype)
    b = torch.randn(k, n, device=device).to(torch_dtype)
    a @ b
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times)


def matmul_ceiling(device, dtype, shapes=None):
    """GFLOP/s of square 2048 and 4096 matmuls and of the given shapes (see gemm_shapes), and the
    best of them: the ceiling that the model's achieved FLOP/s is compared with. Square matmuls
    alone understate what AMX does at some shapes and overstate it at others."""
    squares = {f"{s}x{s}x{s}": (s, s, s) for s in (2048, 4096)}
    own = {name: mkn for name, (mkn, _) in (shapes or {}).items()}
    speeds = {name: matmul_speed(device, dtype, *mkn) for name, mkn in {**squares, **own}.items()}
    return max(speeds.values()), {name: round(v / 1e9, 1) for name, v in speeds.items()}


def bench(model, cfg, train_tokens, steps, eval_steps, windows, warmup, device, profiles=None):
    """Median tokens/s and peak memory of training (training.train_step, windows of bptt rows) and
    evaluation (scoring.score_batch, windows of scoring.eval_window rows). With a `profiles`
    dict, one more batch of each phase runs under torch.profiler and its table of operators by
    self time is stored there under the phase's name."""
    torch.manual_seed(0)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = LossScaler(device.type, enabled=cfg["dtype"] == "fp16")  # as train.py runs fp16
    results = {}
    # A Transformer's evaluation forward is the sliding window's: windows of its whole context, 16 at a time
    # (the scored tokens per second are stride / context of the tokens per second reported).
    evaluated = ((cfg["eval_batch_size"], eval_window(cfg["eval_batch_size"])) if model.context_window is None
                 else (16, model.context_window))
    phases = (("train", cfg["batch_size"], cfg["bptt"], steps), ("eval", *evaluated, eval_steps))
    for phase, bsz, bptt, calls in phases:
        source = batchify(train_tokens, bsz, device)
        nwin = (source.size(0) - 1) // bptt
        state = {"hidden": model.init_hidden(bsz), "workspace": Workspace()}

        def run_batch(i, source=source, nwin=nwin, state=state, phase=phase, bptt=bptt):
            x, y = get_batch(source, (i % nwin) * bptt, bptt)
            if phase == "train":
                state["hidden"] = train_step(model, x, y, state["hidden"], optimizer, cfg,
                                             workspace=state["workspace"], scaler=scaler).hidden
            else:
                state["hidden"] = score_batch(model, x, y, state["hidden"], cfg["dtype"], state["workspace"])[2]

        model.train(phase == "train")
        measured = reset_peak_memory(device)
        times = time_windows(run_batch, calls, windows, warmup, device)
        tokens = calls * bsz * bptt
        results[phase] = {
            "tokens_per_s": tokens / statistics.median(times),
            "window_tokens_per_s": [round(tokens / t, 1) for t in times],
            "peak_memory_mb": round(peak_memory_mb(device), 1) if measured else None,
            "batch_size": bsz, "bptt": bptt,
        }
        if profiles is not None:
            with torch.profiler.profile() as prof:
                run_batch(warmup + windows * calls)
                synchronize(device)
            profiles[phase] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    results["parameters"] = sum(p.numel() for p in model.parameters())
    return results


def get_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=CONFIGS, default="lstm-small", help="model size to time (default: lstm-small)")
    p.add_argument("--data", default="wikitext-2",
                   help="corpus whose training batches are fed (default: the bundled wikitext-2; "
                        "random tokens if it cannot be loaded)")
    p.add_argument("--dtype", choices=DTYPES, nargs="+", default=["fp32"],
                   help="precisions to time, in this order, in one process (default: fp32)")
    p.add_argument("--batch-size", type=cli.count, default=None,
                   help="training batch size in place of the config's (evaluation keeps its own; no reference "
                        "ratios then) (default: the config's)")
    p.add_argument("--steps", type=cli.count, default=30, help="training batches per timed window (default: 30)")
    p.add_argument("--eval-steps", type=cli.count, default=3,
                   help="evaluation calls (of scoring.EVAL_TOKENS tokens each) per timed window (default: 3)")
    p.add_argument("--windows", type=cli.count, default=5, help="timed windows; the median is reported (default: 5)")
    p.add_argument("--warmup", type=cli.count_or_zero, default=5, help="untimed batches first; 0: none (default: 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=cli.count, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true",
                   help="time torch.compile'd models (ours and plain), compiled before the warm-up")
    p.add_argument("--lstm-kernel", choices=LSTM_KERNELS, default="auto",
                   help="how AWD-LSTM's layers run (train.py's --lstm-kernel; awd-lstm-wt2 only) (default: auto)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results to FILE")
    p.add_argument("--profile", metavar="FILE", default=None,
                   help="also profile one more training and evaluation batch of our model per dtype "
                        "(torch.profiler, operators by self time) and write the tables to FILE")
    return p


def summarize(r, flops, ceiling):
    """Add achieved FLOP/s and fraction of the matmul ceiling to one model's results."""
    for phase, per_token in (("train", 3 * flops), ("eval", flops)):
        achieved = r[phase]["tokens_per_s"] * per_token
        r[phase]["achieved_gflops"] = round(achieved / 1e9, 1)
        r[phase]["fraction_of_ceiling"] = round(achieved / ceiling, 3)


def reference(args):
    """REFERENCE's entry for the config, measured at its own batch size (so none at another)."""
    return None if args.batch_size else REFERENCE.get(args.config)


def bench_dtype(args, dtype, tokens, device, profiles=None):
    """Ours and plain at one precision, with FLOPs, ceiling and ratios; `profiles` (see bench)
    receives our model's."""
    model, cfg = build(args.config, WT2_VOCAB, dtype, args.lstm_kernel, args.batch_size)
    flops, shapes = model_flops(model.cfg, cfg, model.decoder.in_features, WT2_VOCAB)
    timing = (args.steps, args.eval_steps, args.windows, args.warmup, device)
    ceiling, ceilings = matmul_ceiling(device, dtype, shapes)
    maybe_compile = torch.compile if args.compile else (lambda m: m)
    ours = bench(maybe_compile(model), cfg, tokens, *timing, profiles)
    results = {"ours": ours}
    if hasattr(model.cfg, "layer_sizes"):  # the recurrent models: a plain nn.LSTM model of the same sizes
        plain = PlainLSTM(WT2_VOCAB, model.cfg.layer_sizes(), cfg["tied"])
        results["plain"] = bench(maybe_compile(plain), {**cfg, "alpha": 0.0, "beta": 0.0}, tokens, *timing)
    del model
    out = {"dtype": dtype, "matmul_ceiling_gflops": round(ceiling / 1e9, 1), "matmul_gflops": ceilings,
           "model_flops_per_token": {"forward": flops, "train": 3 * flops}, **results}
    for r in results.values():
        summarize(r, flops, ceiling)
    if shapes:
        bound = shape_bound(shapes, ceilings)
        out["shape_bound"] = {"train_gflops": round(bound / 1e9, 1), "fraction_of_ceiling": round(bound / ceiling, 3)}
        for r in results.values():
            r["train"]["fraction_of_shape_bound"] = round(r["train"]["achieved_gflops"] * 1e9 / bound, 3)
    if "plain" in results:
        out["ratio_ours_to_plain"] = {p: round(ours[p]["tokens_per_s"] / results["plain"][p]["tokens_per_s"], 3)
                                      for p in ("train", "eval")}
    ref = reference(args)
    if ref:
        out["ratio_to_reference"] = {p: round(ours[p]["tokens_per_s"] / ref[p], 3) for p in ("train", "eval")
                                     if p in ref}
    return out, cfg


def print_run(args, run):
    """The lines of one precision's results: ours and plain, the shape bound, and the ratios."""
    dtype = run["dtype"]
    for name in ("ours", "plain")[:1 + ("plain" in run)]:
        r = run[name]
        print(f"{args.config} ({name}, {dtype}) on {args.device}: "
              f"train {r['train']['tokens_per_s']:,.0f} tok/s ({r['train']['fraction_of_ceiling']:.0%} of "
              f"{run['matmul_ceiling_gflops']:.0f} GFLOP/s), peak {r['train']['peak_memory_mb'] or 0:,.0f} MB | "
              f"eval {r['eval']['tokens_per_s']:,.0f} tok/s, peak {r['eval']['peak_memory_mb'] or 0:,.0f} MB | "
              f"{r['parameters']:,} parameters")
    if "shape_bound" not in run:
        return
    bound = run["shape_bound"]
    print(f"  the model's own matmuls at their measured speeds, nothing else: {bound['train_gflops']:.0f} "
          f"GFLOP/s in training ({bound['fraction_of_ceiling']:.0%} of the ceiling); ours at "
          f"{run['ours']['train']['fraction_of_shape_bound']:.0%} of that, plain at "
          f"{run['plain']['train']['fraction_of_shape_bound']:.0%}")
    print(f"  ours/plain: train {run['ratio_ours_to_plain']['train']:.2f}, "
          f"eval {run['ratio_ours_to_plain']['eval']:.2f}"
          + "".join(f" | ours/reference {p}: {v:.2f}" for p, v in run.get("ratio_to_reference", {}).items()))


@cli.user_errors
def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.lstm_kernel != "auto" and args.config != "awd-lstm-wt2":
        parser.error(f"--lstm-kernel applies to awd-lstm-wt2 only, not {args.config}")
    for flag, path in (("--json", args.json), ("--profile", args.profile)):
        cli.check_file(path, flag)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train.py does
    try:
        tokens, data = load_corpus(args.data).train, args.data
    except DataError:
        print(f"note: {args.data} not found; timing on random tokens", file=sys.stderr)
        tokens, data = torch.randint(0, WT2_VOCAB, (200_000,)), "random"
    device = torch.device(args.device)
    runs, cfg, tables = [], None, []
    for dtype in args.dtype:
        profiles = {} if args.profile else None
        run, cfg = bench_dtype(args, dtype, tokens, device, profiles)
        tables += [f"== {args.config}, ours, {dtype}, {phase} ==\n{table}"
                   for phase, table in (profiles or {}).items()]
        runs.append(run)
        print_run(args, run)
    if len(runs) > 1:
        base = runs[0]["ours"]
        for run in runs[1:]:
            print(f"  {run['dtype']}/{runs[0]['dtype']} (ours): "
                  + ", ".join(f"{p} {run['ours'][p]['tokens_per_s'] / base[p]['tokens_per_s']:.2f}"
                              for p in ("train", "eval")))
    report = {"config": args.config,
              **{k: cfg[k] for k in ("model", "emsize", "nhid", "nlayers", "tied", "batch_size",
                                     "eval_batch_size", "bptt")},
              "device": args.device, "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                     else f"{platform.machine()}, {platform.processor() or '?'}"),
              "data": data, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "compile": args.compile, "lstm_kernel": args.lstm_kernel, "steps": args.steps,
              "eval_steps": args.eval_steps, "windows": args.windows, "warmup": args.warmup,
              "reference": reference(args), "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.profile:
        Path(args.profile).write_text("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
