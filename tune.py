"""Tune the cache pointer or dynamic evaluation of a trained run on the validation split, then
print the evaluate.py command that scores test once with the winner. Test is never looked at.

    python tune.py checkpoints/<run> --method cache --out results/tune-cache
    python tune.py checkpoints/<run> --method dynamic --tokens 30000 --out results/tune-dynamic

cache:   one batch-1 pass of the model records its raw outputs and the targets' log-probabilities;
         every (window, theta, lambda) of the grid is then scored from those alone, since the
         settings change only the cache's attention and the mixture. Validation loss only.
dynamic: gradient statistics once, then dynamic evaluation of the first --tokens of valid
         (Krause et al.'s --gridfast takes 30,000) for each (lr, lambda), as multiples of the
         corpus's published settings unless given.

Writes <out>/tune-<method>.md (the table, best first) and .json, and prints the best setting.
Dynamic evaluation takes minutes per setting: each finished one is kept in
<out>/tune-dynamic.partial.json, so that the same command, run again after a stop, skips it.
"""
import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from data import batchify, corpus_name, load_corpus
from lm import cli
from lm.cache import CACHE_DEFAULTS, PointerCache, cache_probability, mix
from lm.checkpoint import check_vocab, checkpoint_level, load_model, write_atomically
from lm.decoder import Workspace
from lm.dyneval import DYNAMIC_DEFAULTS, STAT_BATCH_SIZE, DynamicSettings, dynamic_evaluate, statistics
from lm.precision import DTYPES, autocast, check_dtype
from lm.scoring import evaluate, refuse_for_stateless, windows, zeros

CACHE_GRID = {"window": [500, 1000, 2000, 3785], "theta": [0.3, 0.662, 1.0, 1.5],
              "lam": [0.05, 0.1, 0.1279, 0.2]}
DYNAMIC_SCALES = [0.5, 1.0, 2.0]  # multiples of the published lr and lambda


@torch.no_grad()
def recorded_pass(model, source, dtype):
    """One plain pass over source (rows, 1) that keeps what the cache's settings act on: (raw
    outputs (T, 1, d) fp32, targets (T, 1), the targets' model log-probabilities (T, 1), the
    pass's plain loss, counted as scoring.evaluate counts it)."""
    model.eval()
    hidden, workspace = model.init_hidden(source.size(1)), Workspace()
    raw, targets, model_lp = [], [], []
    nats, = zeros(source, 1)
    for x, y in windows(source, progress=True):
        with autocast(x.device, dtype):
            out = model.features(x, hidden)
            chunks = model.log_probs(out, workspace=workspace)
        window_nats, = zeros(source, 1)
        with torch.autocast(x.device.type, enabled=False):
            for start, log_probs in chunks:
                model_lp.append(log_probs.gather(1, y.reshape(-1)[start:start + log_probs.size(0), None])[:, 0])
                window_nats -= model_lp[-1].sum()
        raw.append(out.raw.float())
        targets.append(y)
        nats += window_nats
        hidden = out.hidden
    return torch.cat(raw), torch.cat(targets), torch.cat(model_lp)[:, None], nats.item() / (source.size(0) - 1)


def cache_grid(model, source, grid, dtype, chunk=2048):
    """[(settings dict, val loss)] over the grid, from one recorded pass over source (rows, 1)."""
    keys, words, model_lp, plain_loss = recorded_pass(model, source, dtype)
    rows = [({"window": 0, "theta": 0.0, "lam": 0.0}, plain_loss)]
    for window, theta in tqdm(list(itertools.product(grid["window"], grid["theta"])), desc="cache grid"):
        cache = PointerCache(window, theta, 1.0)
        p_cache, has_memory = [], []
        for q0 in range(0, keys.size(0), chunk):
            weights, lam, key_words = cache.attend(keys[q0:q0 + chunk], keys, words, q0, q0)
            p_cache.append(cache_probability(words[q0:q0 + chunk], weights, key_words))
            has_memory.append(lam)
        p_cache, has_memory = torch.cat(p_cache), torch.cat(has_memory)
        for lam in grid["lam"]:
            loss = -mix(model_lp, p_cache, has_memory * lam).sum(dtype=torch.float64).item() / model_lp.numel()
            rows.append(({"window": window, "theta": theta, "lam": lam}, loss))
    return rows


def dynamic_grid(model, source, stats_source, base, lrs, lams, stat_batches, dtype, stats_path=None, timing=None,
                 done=None, record=None):
    """[(settings dict, val loss)] of dynamic evaluation of source for each (lr, lambda); the
    gradient statistics are kept in stats_path when given (see dyneval.statistics), and the
    seconds they took go in timing["stat_seconds"] when a dict is given. Settings whose loss is
    in done ({(lr, lambda): loss}, from an earlier, stopped call) are not scored again; record(lr,
    lambda, loss) is called after each one that is."""
    done = done or {}
    t0 = time.time()
    ms = statistics(model, stats_source, base.bptt, stat_batches, dtype, progress=True, path=stats_path)
    if timing is not None:
        timing["stat_seconds"] = round(time.time() - t0, 1)
    rows = [({"lr": 0.0, "lam": 0.0}, evaluate(model, source, dtype, window=base.bptt).loss)]
    for lr, lam in itertools.product(lrs, lams):
        if (lr, lam) not in done:
            done[lr, lam], _ = dynamic_evaluate(model, source, ms, DynamicSettings(lr, lam, base.epsilon, base.bptt),
                                                dtype, progress=True)
            if record:
                record(lr, lam, done[lr, lam])
        rows.append(({"lr": lr, "lam": lam}, done[lr, lam]))
    return rows


class Partial:
    """The dynamic grid's finished settings, kept in a file beside the table so that a stopped
    tune.py run continues where it was: rows of {lr, lam, val_loss}, with the job they belong to
    (a file of another job is ignored and replaced). Deleted once the table is written."""

    def __init__(self, path, job):
        self.path, self.job = Path(path), job
        saved = {}
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
            except ValueError:  # JSON or UTF-8: e.g. damaged; it only saves time, so start over
                print(f"note: {self.path} is unreadable; its settings are scored again", file=sys.stderr)
        self.rows = saved.get("rows", []) if isinstance(saved, dict) and saved.get("job") == job else []

    def done(self):
        return {(r["lr"], r["lam"]): r["val_loss"] for r in self.rows}

    def record(self, lr, lam, loss):
        self.rows.append({"lr": lr, "lam": lam, "val_loss": loss})
        text = json.dumps({"job": self.job, "rows": self.rows}, indent=2) + "\n"
        write_atomically(self.path, lambda f: f.write(text.encode()))

    def finish(self):
        self.path.unlink(missing_ok=True)


def get_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by train.py")
    p.add_argument("--method", choices=("cache", "dynamic"), required=True, help="what to tune")
    p.add_argument("--out", default="results", help="folder for the table (default: results)")
    p.add_argument("--tokens", type=cli.count, default=None,
                   help="tune on the first this many tokens of valid (default: all for cache, 30000 for dynamic)")
    p.add_argument("--windows", type=cli.count, nargs="+", default=CACHE_GRID["window"], help="cache windows to try")
    p.add_argument("--thetas", type=float, nargs="+", default=CACHE_GRID["theta"], help="cache thetas to try")
    p.add_argument("--lambdas", type=float, nargs="+", default=None,
                   help=f"cache: lambdas to try (default: {CACHE_GRID['lam']}); dynamic: decay rates to try "
                        f"(default: {DYNAMIC_SCALES} x the corpus's published lambda)")
    p.add_argument("--lrs", type=float, nargs="+", default=None,
                   help=f"dynamic: step sizes to try (default: {DYNAMIC_SCALES} x the published lr)")
    p.add_argument("--dyn-bptt", type=cli.count, default=5, help="dynamic: tokens per segment (default: 5)")
    p.add_argument("--dyn-stat-batches", type=cli.count, default=None,
                   help="dynamic: training segments for the gradient statistics (default: all)")
    p.add_argument("--dyn-stats", metavar="FILE", default=None,
                   help="dynamic: keep the gradient statistics in FILE for evaluate.py --dyn-stats (default: not kept)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="precision, as evaluate.py's --dtype; fp16 not for --method dynamic (default: fp32)")
    p.add_argument("--device", default=None, help=f"{cli.DEVICES} (default: cuda if available, else cpu)")
    return p


def check_inputs(args):
    """Refuse paths or grid values that cannot work."""
    if any(not t > 0 for t in args.thetas):
        raise cli.UserError("--thetas must all be positive")
    if any(not 0 <= lam <= 1 for lam in args.lambdas or []):
        raise cli.UserError("--lambdas must all be in [0, 1]")
    if any(not lr >= 0 for lr in args.lrs or []):
        raise cli.UserError("--lrs must not be negative")
    cli.check_folder(args.out, "--out")
    cli.check_file(args.dyn_stats, "--dyn-stats")


def load(args, device):
    """(model, checkpoint, corpus, the first --tokens of valid batchified at batch 1)."""
    cli.check_device(device)
    check_dtype(device, args.dtype, unscaled_backward=args.method == "dynamic")
    model, ckpt = load_model(args.run, device)
    refuse_for_stateless(model, f"--method {args.method}")
    corpus = load_corpus(ckpt["data"], checkpoint_level(ckpt))
    check_vocab(corpus, ckpt)
    tokens = args.tokens or (30_000 if args.method == "dynamic" else None)
    return model, ckpt, corpus, batchify(corpus.valid[:tokens], 1, device)


def tune_dynamic(args, model, ckpt, corpus, source, timing):
    """(rows, the published settings, the Partial) of the dynamic grid, continuing a stopped
    run's partial file; finish() the Partial once the table is written."""
    name, out = corpus_name(ckpt["data"]), Path(args.out)
    base = DYNAMIC_DEFAULTS.get(name, DYNAMIC_DEFAULTS["ptb"])
    base = DynamicSettings(base.lr, base.lam, base.epsilon, args.dyn_bptt)
    lrs = args.lrs or [base.lr * k for k in DYNAMIC_SCALES]
    lams = args.lambdas or [base.lam * k for k in DYNAMIC_SCALES]
    stats = batchify(corpus.train, STAT_BATCH_SIZE, source.device)
    job = {"run": str(Path(args.run).resolve()), "epoch": ckpt["state"]["epoch"], "tokens": source.size(0) - 1,
           "epsilon": base.epsilon, "bptt": base.bptt, "stat_batches": args.dyn_stat_batches, "dtype": args.dtype}
    out.mkdir(parents=True, exist_ok=True)
    partial = Partial(out / "tune-dynamic.partial.json", job)
    rows = dynamic_grid(model, source, stats, base, lrs, lams, args.dyn_stat_batches, args.dtype, args.dyn_stats,
                        timing, partial.done(), partial.record)
    return rows, base, partial


def write_table(args, rows, tokens, corpus, published, extra):
    """<out>/tune-<method>.md and .json, the rows best first; extra goes into the JSON."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0][0])
    lines = [f"# {args.method} on the first {tokens:,} tokens of valid, {args.run}", "",
             *([f"Published settings for {corpus}: {published}", ""] if published else []),
             "The row of zeros is plain evaluation.", "",
             "| " + " | ".join(keys) + " | val loss | val ppl |", "|" + "---|" * (len(keys) + 2)]
    lines += ["| " + " | ".join(f"{s[k]:.4g}" for k in keys) + f" | {loss:.4f} | {math.exp(loss):.2f} |"
              for s, loss in rows]
    (out / f"tune-{args.method}.md").write_text("\n".join(lines) + "\n")
    (out / f"tune-{args.method}.json").write_text(json.dumps(
        {"run": str(args.run), "tokens": tokens, **extra,
         "rows": [{**s, "val_loss": loss, "val_ppl": math.exp(loss)} for s, loss in rows]}, indent=2) + "\n")


def print_best(args, rows):
    """The best setting, and the evaluate.py command that scores test with it."""
    best, loss = rows[0]
    print(f"best on valid: {best} (ppl {math.exp(loss):.2f}); the table is in "
          f"{Path(args.out) / f'tune-{args.method}.md'}")
    if best == rows_plain(rows):
        print("no setting beats plain evaluation")
        return
    extra = "" if args.method == "cache" else (
        (f" --dyn-bptt {args.dyn_bptt}" if args.dyn_bptt != 5 else "")
        + (f" --dyn-stat-batches {args.dyn_stat_batches}" if args.dyn_stat_batches else "")
        + (f" --dyn-stats {args.dyn_stats}" if args.dyn_stats else ""))
    print(f"score test once with: python evaluate.py {args.run} {method_flags(args.method, best)}{extra}")


@cli.user_errors
def main(argv=None):
    args = get_parser().parse_args(argv)
    check_inputs(args)
    model, ckpt, corpus, source = load(args, args.device or cli.default_device())
    name, t0, timing, partial = corpus_name(ckpt["data"]), time.time(), {}, None
    if args.method == "cache":
        grid = {"window": args.windows, "theta": args.thetas, "lam": args.lambdas or CACHE_GRID["lam"]}
        rows, published = cache_grid(model, source, grid, args.dtype), CACHE_DEFAULTS.get(name)
    else:
        rows, published, partial = tune_dynamic(args, model, ckpt, corpus, source, timing)
    rows.sort(key=lambda r: r[1])
    write_table(args, rows, source.size(0) - 1, name, published, {"seconds": round(time.time() - t0, 1), **timing})
    if partial:
        partial.finish()
    print_best(args, rows)
    return 0


def rows_plain(rows):
    """The settings of the grid's plain-evaluation row (all zero)."""
    return next(s for s, _ in rows if not any(s.values()))


def method_flags(method, s):
    if method == "cache":
        return f"--cache --cache-window {s['window']} --cache-theta {s['theta']:g} --cache-lambda {s['lam']:g}"
    return f"--dynamic-eval --dyn-lr {s['lr']:.4g} --dyn-lambda {s['lam']:.4g}"


if __name__ == "__main__":
    sys.exit(main())
