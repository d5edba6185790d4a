"""Loss, perplexity and next-token accuracy of a trained run on any split (bits per character too
for character-level runs).

    python evaluate.py checkpoints/<run>                  # test split, batch size 1
    python evaluate.py checkpoints/<run> --split valid --json valid.json
    python evaluate.py checkpoints/<char-run> --split valid+test   # the last 10%, nanoGPT's val split
    python evaluate.py checkpoints/<run> --cache            # with the continuous cache pointer
    python evaluate.py checkpoints/<run> --dynamic-eval     # with dynamic evaluation
    python evaluate.py checkpoints/<run> --dynamic-eval --cache --dyn-stats ms.pt   # both; statistics kept

With --cache, the same pass also reports the scores without the cache's mixture (with
--dynamic-eval: dynamic evaluation alone), since the model's predictions do not depend on it.
"""
import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict
from typing import NamedTuple

import torch

from data import DataError, batchify, corpus_name, load_corpus
from lm import cli
from lm.cache import CACHE_DEFAULTS, PointerCache, check_settings
from lm.checkpoint import CheckpointError, check_vocab, checkpoint_level, load_model
from lm.dyneval import (
    DYNAMIC_DEFAULTS,
    STAT_BATCH_SIZE,
    DynamicSettings,
    PassFile,
    dynamic_evaluate,
    pass_key,
    statistics,
)
from lm.dyneval import check_settings as check_dynamic
from lm.kernels import DTYPES, check_dtype
from lm.scoring import EVAL_TOKENS, Scores, eval_window, evaluate


def get_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by train.py (or a checkpoint file in it)")
    p.add_argument("--split", choices=("test", "valid", "train", "valid+test"), default="test",
                   help="split to score; valid+test is the two joined, which for a text file cut by "
                        "--level char is its last 10%% (default: test)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="columns evaluated in parallel (default: 1 for test and valid+test, the "
                        "AWD-LSTM paper's protocol, where every token sees its full history; 10 for "
                        "valid and train, as during training)")
    p.add_argument("--window", type=int, default=None,
                   help="rows (time steps) per forward call; the state carries across calls, so "
                        f"this changes speed, not the result (default: {EVAL_TOKENS:,} tokens per "
                        "call, i.e. that many rows at batch 1)")
    p.add_argument("--data", default=None,
                   help="corpus to score, a hub name or folder (default: the one the run trained on)")
    p.add_argument("--device", default=None, help=f"{cli.DEVICES} (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="fp32, or bf16 or fp16 autocast (faster where the hardware has it; its logits are "
                        "rounded, so the loss can differ in the 3rd-4th digit); fp16 is for CUDA GPUs and not "
                        "for --dynamic-eval, whose gradients it would flush to zero (default: fp32)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    known = "; ".join(f"{name}: window {c.window}, theta {c.theta}, lambda {c.lam}"
                      for name, c in CACHE_DEFAULTS.items())
    g = p.add_argument_group("continuous cache pointer (Grave et al. 2017)")
    g.add_argument("--cache", action="store_true",
                   help="mix a cache of the recent outputs into the predictions (sets the default batch "
                        "size to 1 for every split, the published protocol)")
    g.add_argument("--cache-window", type=int, default=None,
                   help="previous positions in the cache (default: the original README's value for the corpus)")
    g.add_argument("--cache-theta", type=float, default=None,
                   help="sharpness of the cache's attention (default: ditto)")
    g.add_argument("--cache-lambda", type=float, default=None, help="weight of the cache in the mixture (default: "
                                                                    f"ditto; {known})")
    g.add_argument("--cache-original-gaps", action="store_true",
                   help="leave out the cache where the original pointer.py does: the first window targets "
                        "of the split and the first target of each of its evaluation chunks")
    d = DYNAMIC_DEFAULTS
    g = p.add_argument_group("dynamic evaluation (Krause et al. 2018, RMS with decay to the trained weights)")
    g.add_argument("--dynamic-eval", action="store_true",
                   help="adapt the weights to the text while scoring it, one step per segment (sets the "
                        "default batch size to 1 for every split, the published protocol)")
    g.add_argument("--dyn-lr", type=float, default=None,
                   help=f"step size eta (default: {d['wikitext-2'].lr:.3g} for wikitext-2, the paper's AWD-LSTM "
                        "setting in the published code's current units; "
                        f"{d['ptb'].lr:g} for ptb and other corpora, the published code's default)")
    g.add_argument("--dyn-lambda", type=float, default=None,
                   help=f"decay towards the trained weights (default: {d['wikitext-2'].lam:.3g} for wikitext-2, "
                        f"{d['ptb'].lam:g} otherwise, from the same sources)")
    g.add_argument("--dyn-epsilon", type=float, default=None,
                   help=f"added to the RMS gradient (default: {d['wikitext-2'].epsilon:.3g} for wikitext-2, "
                        f"{d['ptb'].epsilon:g} otherwise)")
    g.add_argument("--dyn-bptt", type=int, default=5, help="tokens per segment, one update each (default: 5)")
    g.add_argument("--dyn-stat-batches", type=int, default=None,
                   help=f"segments of the training data ({STAT_BATCH_SIZE} columns x --dyn-bptt tokens) "
                        "for the gradient statistics (default: all of it, as published)")
    g.add_argument("--dyn-stats", metavar="FILE", default=None,
                   help="keep the gradient statistics in FILE: read them from it when it was made from the same "
                        "weights, training data, --dyn-bptt, --dyn-stat-batches and --dtype, else compute them "
                        "and write it, so that scoring another split skips them (default: compute every time)")
    g.add_argument("--dyn-checkpoint", metavar="FILE", default=None,
                   help="keep the pass's progress in FILE, saved every --dyn-checkpoint-every minutes and on "
                        "Ctrl-C or SIGTERM; the same command run again continues from it, to the same numbers, "
                        "and FILE is deleted when the pass is done (default: none; a stopped pass is lost)")
    g.add_argument("--dyn-checkpoint-every", metavar="MINUTES", type=float, default=10.0,
                   help="minutes between saves to --dyn-checkpoint; 0 saves after every segment (default: 10)")
    return p


def make_dynamic(args, data):
    """The DynamicSettings that the flags ask for, or None; settings not given come from the
    corpus's entry in DYNAMIC_DEFAULTS (PTB's, the published code's defaults, for other corpora)."""
    if not args.dynamic_eval:
        if args.dyn_checkpoint:
            raise DataError("--dyn-checkpoint applies to --dynamic-eval only")
        return None
    known = DYNAMIC_DEFAULTS.get(corpus_name(data), DYNAMIC_DEFAULTS["ptb"])
    given = {"lr": args.dyn_lr, "lam": args.dyn_lambda, "epsilon": args.dyn_epsilon}
    settings = DynamicSettings(**{k: getattr(known, k) if v is None else v for k, v in given.items()},
                               bptt=args.dyn_bptt)
    check_dynamic(settings, args.dyn_stat_batches)
    if args.dyn_checkpoint_every < 0:
        raise DataError(f"--dyn-checkpoint-every must not be negative, got {args.dyn_checkpoint_every:g}")
    return settings


def make_cache(args, data):
    """The PointerCache that the flags ask for, or None; settings not given come from the
    corpus's entry in CACHE_DEFAULTS."""
    if not args.cache:
        return None
    known = CACHE_DEFAULTS.get(corpus_name(data))
    given = (args.cache_window, args.cache_theta, args.cache_lambda)
    if known is None and None in given:
        raise DataError(f"no cache defaults for {data} (known: {', '.join(CACHE_DEFAULTS)}); give "
                        "--cache-window, --cache-theta and --cache-lambda")
    defaults = (known.window, known.theta, known.lam) if known else given
    window, theta, lam = (v if v is not None else d for v, d in zip(given, defaults, strict=True))
    check_settings(window, theta, lam)
    if args.cache_original_gaps and (known is None or known.chunk is None):
        raise DataError(f"--cache-original-gaps needs the original evaluation chunk, known for "
                        f"{', '.join(CACHE_DEFAULTS)} only")
    return PointerCache(window, theta, lam, known.chunk if args.cache_original_gaps else None)


class Job(NamedTuple):
    """What main() scores, and how."""
    model: torch.nn.Module
    ckpt: dict
    level: str
    source: torch.Tensor  # the split, batchified
    window: int  # rows per forward call (plain and cache) or per update (dynamic evaluation)
    cache: PointerCache = None
    dynamic: DynamicSettings = None
    stats_source: torch.Tensor = None  # the training data for dynamic evaluation's statistics


def prepare(args):
    """Load and check everything main() needs, with one-line errors (DataError, CheckpointError)."""
    device = args.device or cli.default_device()
    counts = {"--dyn-bptt": args.dyn_bptt, "--dyn-stat-batches": args.dyn_stat_batches,
              "--cache-window": args.cache_window}
    for flag, value in counts.items():
        if value is not None and value < 1:  # refused with or without --dynamic-eval or --cache
            raise DataError(f"{flag} must be at least 1, got {value}")
    outputs = {"--json": args.json, "--dyn-stats": args.dyn_stats, "--dyn-checkpoint": args.dyn_checkpoint}
    for flag, path in outputs.items():
        cli.check_file(path, flag)  # checked before the scoring whose result goes there
    cli.check_device(device)
    check_dtype(device, args.dtype, unscaled_backward=args.dynamic_eval)
    model, ckpt = load_model(args.run, device)
    level, data = checkpoint_level(ckpt), args.data or ckpt["data"]
    corpus = load_corpus(data, level)
    check_vocab(corpus, ckpt)
    cache, dynamic = make_cache(args, data), make_dynamic(args, data)
    if dynamic and args.window is not None:
        raise DataError("--window does not apply to --dynamic-eval, whose windows are --dyn-bptt tokens")
    batch_size = args.batch_size
    if batch_size is None:
        batch_size = 10 if args.split in ("valid", "train") and not (cache or dynamic) else 1
    if batch_size < 1 or (args.window is not None and args.window < 1):
        raise DataError("--batch-size and --window must be positive")
    window = dynamic.bptt if dynamic else args.window if args.window is not None else eval_window(batch_size)
    stats_source = None
    if dynamic:
        needed = STAT_BATCH_SIZE * (dynamic.bptt + 1)
        if len(corpus.train) < needed:
            raise DataError(f"--dynamic-eval takes its gradient statistics from the training split, and {data} "
                            f"has only {len(corpus.train):,} training tokens (it needs {needed:,})")
        stats_source = batchify(corpus.train, STAT_BATCH_SIZE, device)
    source = batchify(corpus.split(args.split), batch_size, device)
    return Job(model, ckpt, level, source, window, cache, dynamic, stats_source)


def run_dynamic(args, job, extra):
    """Dynamic evaluation for main(): (Scores, or None when stopped and kept; the PassFile or
    None). Its settings go into extra["dynamic_eval"]."""
    t0 = time.time()
    keep = None
    if args.dyn_checkpoint:
        key = pass_key(job.model, job.source, job.dynamic, args.dtype, job.cache, job.stats_source,
                       args.dyn_stat_batches)
        keep = PassFile(args.dyn_checkpoint, args.dyn_checkpoint_every, key)
    ms = statistics(job.model, job.stats_source, job.dynamic.bptt, args.dyn_stat_batches, args.dtype,
                    progress=True, path=args.dyn_stats)
    extra["dynamic_eval"] = {**asdict(job.dynamic), "stat_batches": args.dyn_stat_batches,
                             "stat_seconds": round(time.time() - t0, 2), "stats_file": args.dyn_stats,
                             "continued_from_segment": keep.saved["segment"] if keep and keep.saved else None}
    with cli.StopOnInterrupt("segment") if keep else contextlib.nullcontext() as stop:
        scores = dynamic_evaluate(job.model, job.source, ms, job.dynamic, args.dtype, progress=True, cache=job.cache,
                                  keep=keep, stop=lambda: stop is not None and stop.requested)
    return (None if scores is None else Scores(*scores)), keep


@cli.user_errors
def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        job = prepare(args)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    extra, keep = {}, None
    if job.dynamic:
        try:
            scores, keep = run_dynamic(args, job, extra)
        except (CheckpointError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if scores is None:
            print(f"stopped; the pass is kept in {keep.path}: run the same command to continue it", file=sys.stderr)
            return 130
    else:
        scores = evaluate(job.model, job.source, args.dtype, job.window, progress=True, cache=job.cache)
    seconds = time.time() - t0 + (keep.earlier_seconds if keep else 0.0)
    tokens, batch_size = (job.source.size(0) - 1) * job.source.size(1), job.source.size(1)
    alone = None
    if job.cache:
        extra["cache"] = {"window": job.cache.window, "theta": job.cache.theta, "lambda": job.cache.lam,
                          "original_gaps": job.cache.gaps}
        # The same pass without the cache's mixture (with dynamic evaluation: dynamic evaluation alone).
        alone = Scores(job.cache.model_nats.item() / tokens, job.cache.model_correct.item() / tokens)
        extra["without_cache"] = {"loss": alone.loss, "ppl": alone.ppl, "accuracy": alone.accuracy}
    result = {"run": str(args.run), "split": args.split, "level": job.level, "loss": scores.loss,
              "ppl": scores.ppl, "accuracy": scores.accuracy, "tokens": tokens, "batch_size": batch_size,
              "window": job.window, "dtype": args.dtype, "epoch": job.ckpt["state"]["epoch"],
              "seconds": round(seconds, 2), **extra}
    bits = ""
    if job.level == "char":
        result["bpc"] = scores.bits
        bits = f" | bpc {scores.bits:.4f}"
    method = "".join(name for name, on in ((" | cache", job.cache), (" | dynamic evaluation", job.dynamic)) if on)
    print(f"{args.split} loss {scores.loss:.4f} nats/{job.level}{bits} | ppl {scores.ppl:.2f} | "
          f"accuracy {scores.accuracy:.2%} | {tokens:,} tokens | batch {batch_size} | window {job.window}{method} | "
          f"{args.dtype} | {tokens / seconds:,.0f} tokens/s")
    if alone:
        print(f"{args.split} without the cache, from the same pass: loss {alone.loss:.4f} | ppl {alone.ppl:.2f} | "
              f"accuracy {alone.accuracy:.2%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if keep:
        keep.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
