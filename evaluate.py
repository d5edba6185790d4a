"""Loss, perplexity and next-token accuracy of a trained run on any split (bits per character too
for character-level runs).

    python evaluate.py checkpoints/<run>                  # test split, batch size 1
    python evaluate.py checkpoints/<run> --split valid --json valid.json
    python evaluate.py checkpoints/<char-run> --split valid+test   # the last 10%, nanoGPT's val split
    python evaluate.py checkpoints/<run> --cache            # with the continuous cache pointer
    python evaluate.py checkpoints/<run> --dynamic-eval     # with dynamic evaluation
    python evaluate.py checkpoints/<run> --dynamic-eval --cache --dyn-stats ms.pt   # both; statistics kept
    python evaluate.py checkpoints/<transformer-run> --stride 32   # a sliding window advancing 32 tokens

With --cache, the same pass also reports the scores without the cache's mixture (with
--dynamic-eval: dynamic evaluation alone), since the model's predictions do not depend on it.
A Transformer has no state to carry: it is scored at batch 1 by windows of its full context that
slide --stride tokens at a time, each token scored once, and the output says how much context the
tokens had; --batch-size, --window, --cache and --dynamic-eval are for the recurrent models.
"""
import argparse
import json
import sys
import time
from typing import NamedTuple

import torch

from data import DataError, batchify, load_corpus
from lm import cli, dyneval
from lm.cache import CACHE_DEFAULTS, PointerCache, cache_evaluate, make_cache
from lm.checkpoint import check_vocab, checkpoint_level, load_model
from lm.dyneval import DYNAMIC_DEFAULTS, STAT_BATCH_SIZE, DynamicSettings
from lm.precision import DTYPES, check_dtype
from lm.scoring import (
    EVAL_TOKENS,
    Scores,
    default_stride,
    eval_window,
    evaluate,
    refuse_for_stateless,
    sliding_evaluate,
)


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
    p.add_argument("--stride", type=int, default=None,
                   help="transformer only: tokens each sliding window advances; past the text's first window every "
                        "token is predicted from at least context - stride + 1 tokens (default: half the context)")
    p.add_argument("--data", default=None,
                   help="corpus to score, a hub name or folder (default: the one the run trained on)")
    p.add_argument("--device", default=None, help=f"{cli.DEVICES} (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="fp32, or bf16 or fp16 autocast (faster where the hardware has it; its logits are "
                        "rounded, so the loss can differ in the 3rd-4th digit); fp16 is for CUDA GPUs and not "
                        "for --dynamic-eval, whose gradients it would flush to zero (default: fp32)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    add_cache_flags(p)
    add_dynamic_flags(p)
    return p


def add_cache_flags(p):
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


def add_dynamic_flags(p):
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


def make_methods(args, data):
    """The PointerCache and the DynamicSettings that the flags ask for, each None when not asked
    for; settings not given come from the corpus's published ones."""
    cache = make_cache(data, args.cache_window, args.cache_theta, args.cache_lambda,
                       args.cache_original_gaps) if args.cache else None
    if not args.dynamic_eval:
        if args.dyn_checkpoint:
            raise cli.UserError("--dyn-checkpoint applies to --dynamic-eval only")
        return cache, None
    dynamic = dyneval.make_settings(data, args.dyn_lr, args.dyn_lambda, args.dyn_epsilon, args.dyn_bptt,
                                    args.dyn_stat_batches)
    if args.dyn_checkpoint_every < 0:
        raise cli.UserError(f"--dyn-checkpoint-every must not be negative, got {args.dyn_checkpoint_every:g}")
    return cache, dynamic


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
    stride: int = None  # a Transformer's: its sliding window's step (then window is its context)


def check_flags(args, device):
    """Refuse counts, output paths, the device and the dtype that cannot work, before any loading."""
    counts = {"--dyn-bptt": args.dyn_bptt, "--dyn-stat-batches": args.dyn_stat_batches,
              "--cache-window": args.cache_window}
    for flag, value in counts.items():
        if value is not None and value < 1:  # refused with or without --dynamic-eval or --cache
            raise cli.UserError(f"{flag} must be at least 1, got {value}")
    outputs = {"--json": args.json, "--dyn-stats": args.dyn_stats, "--dyn-checkpoint": args.dyn_checkpoint}
    for flag, path in outputs.items():
        cli.check_file(path, flag)  # checked before the scoring whose result goes there
    cli.check_device(device)
    check_dtype(device, args.dtype, unscaled_backward=args.dynamic_eval)


def sliding_stride(args, model):
    """A Transformer's stride, after refusing the recurrent passes' flags; None for a recurrent
    model, after refusing --stride."""
    context = model.context_window
    if context is None:
        if args.stride is not None:
            raise cli.UserError("--stride applies to a Transformer's sliding window; a recurrent model carries its "
                                "state over the whole split")
        return None
    for flag, given in (("--cache", args.cache), ("--dynamic-eval", args.dynamic_eval)):
        if given:
            refuse_for_stateless(model, flag)
    for flag, given in (("--batch-size", args.batch_size), ("--window", args.window)):
        if given is not None:
            raise cli.UserError(f"{flag} does not apply to a Transformer: it is scored at batch 1 by a sliding window "
                                f"of its {context}-token context; --stride sets the window's step")
    stride = default_stride(context) if args.stride is None else args.stride
    if not 1 <= stride <= context:
        raise cli.UserError(f"--stride must be in [1, {context}] (the context window), got {stride}")
    return stride


def prepare(args):
    """Load and check everything main() needs, with one-line errors (cli.UserError)."""
    device = args.device or cli.default_device()
    check_flags(args, device)
    model, ckpt = load_model(args.run, device)
    stride = sliding_stride(args, model)
    level, data = checkpoint_level(ckpt), args.data or ckpt["data"]
    corpus = load_corpus(data, level)
    check_vocab(corpus, ckpt)
    cache, dynamic = make_methods(args, data)
    if dynamic and args.window is not None:
        raise cli.UserError("--window does not apply to --dynamic-eval, whose windows are --dyn-bptt tokens")
    batch_size = 1 if stride else args.batch_size
    if batch_size is None:
        batch_size = 10 if args.split in ("valid", "train") and not (cache or dynamic) else 1
    if batch_size < 1 or (args.window is not None and args.window < 1):
        raise cli.UserError("--batch-size and --window must be positive")
    window = dynamic.bptt if dynamic else args.window if args.window is not None else eval_window(batch_size)
    stats_source = None
    if dynamic:
        needed = STAT_BATCH_SIZE * (dynamic.bptt + 1)
        if len(corpus.train) < needed:
            raise DataError(f"--dynamic-eval takes its gradient statistics from the training split, and {data} "
                            f"has only {len(corpus.train):,} training tokens (it needs {needed:,})")
        stats_source = batchify(corpus.train, STAT_BATCH_SIZE, device)
    source = batchify(corpus.split(args.split), batch_size, device)
    window = model.context_window if stride else window
    return Job(model, ckpt, level, source, window, cache, dynamic, stats_source, stride)


def report(args, job, scores, seconds, extra):
    """Print the result line (and the cache's model-alone line) and write --json."""
    tokens, batch_size = (job.source.size(0) - 1) * job.source.size(1), job.source.size(1)
    alone = None
    if job.cache:
        extra["cache"] = job.cache.settings()
        # The same pass without the cache's mixture (with dynamic evaluation: dynamic evaluation alone).
        alone = Scores.of(job.cache.model_nats, job.cache.model_correct, job.source)
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
    shape = (f"sliding window {job.window}, stride {job.stride}" if job.stride
             else f"batch {batch_size} | window {job.window}")
    print(f"{args.split} loss {scores.loss:.4f} nats/{job.level}{bits} | ppl {scores.ppl:.2f} | "
          f"accuracy {scores.accuracy:.2%} | {tokens:,} tokens | {shape}{method} | "
          f"{args.dtype} | {tokens / seconds:,.0f} tokens/s")
    if job.stride:
        print(extra["sliding_window"])
    if alone:
        print(f"{args.split} without the cache, from the same pass: loss {alone.loss:.4f} | ppl {alone.ppl:.2f} | "
              f"accuracy {alone.accuracy:.2%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


@cli.user_errors
def main(argv=None):
    args = get_parser().parse_args(argv)
    job = prepare(args)
    t0, extra, keep = time.time(), {}, None
    if job.dynamic:
        scores, extra["dynamic_eval"], keep = dyneval.run(
            job.model, job.source, job.dynamic, job.stats_source, args.dtype, stat_batches=args.dyn_stat_batches,
            stats_path=args.dyn_stats, checkpoint=args.dyn_checkpoint, every_minutes=args.dyn_checkpoint_every,
            cache=job.cache, progress=True)
        if scores is None:
            print(f"stopped; the pass is kept in {keep.path}: run the same command to continue it", file=sys.stderr)
            return 130
    elif job.stride:
        scores, scored = sliding_evaluate(job.model, job.source, args.dtype, job.stride)
        extra["stride"], extra["sliding_window"] = job.stride, scored.summary()
    elif job.cache:
        scores = cache_evaluate(job.model, job.source, job.cache, args.dtype, job.window, progress=True)
    else:
        scores = evaluate(job.model, job.source, args.dtype, job.window, progress=True)
    report(args, job, scores, time.time() - t0 + (keep.earlier_seconds if keep else 0.0), extra)
    if keep:
        keep.finish()  # the result is out: the kept pass is no longer needed
    return 0


if __name__ == "__main__":
    sys.exit(main())
