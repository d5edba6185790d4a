"""Perplexity of a trained run on the test (or validation) split.

    python evaluate.py checkpoints/<run>                  # test split, batch size 1
    python evaluate.py checkpoints/<run> --split valid --json valid.json
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import CheckpointError, load_model
from data import DataError, batchify, get_batch, load_corpus


@torch.no_grad()
def evaluate(model, source, bptt, progress=False):
    """Mean cross-entropy (nats per token) over a batchified source, shape (rows, batch).

    The recurrent state is carried from one bptt window to the next, as in training, so every
    token after the first of a column is predicted with the whole column before it as context.
    """
    model.eval()
    hidden = model.init_hidden(source.size(1))
    total = torch.zeros((), dtype=torch.float64, device=source.device)
    starts = range(0, source.size(0) - 1, bptt)
    bar = tqdm(starts, desc="eval", disable=not progress, leave=False,
               mininterval=0.5 if sys.stderr.isatty() else 60)
    for i in bar:
        x, y = get_batch(source, i, bptt)
        out = model(x, hidden)
        hidden = out.hidden
        total += F.cross_entropy(out.logits.view(-1, out.logits.size(-1)), y.reshape(-1), reduction="sum")
    return total.item() / ((source.size(0) - 1) * source.size(1))


def check_vocab(corpus, ckpt):
    if corpus.itos != ckpt["vocab"]:
        raise CheckpointError(
            f"the data at {corpus.source} has a different vocabulary ({len(corpus.itos)} words) "
            f"from the checkpoint's ({len(ckpt['vocab'])} words); pass the --data it was trained on")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by train.py (or a checkpoint file in it)")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="split to score (default: test)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="columns evaluated in parallel (default: 1 for test, the AWD-LSTM paper's "
                        "protocol, where every token sees its full history; 10 for valid, as "
                        "during training)")
    p.add_argument("--bptt", type=int, default=None,
                   help="tokens per forward call; the state still carries across calls "
                        "(default: the run's training --bptt)")
    p.add_argument("--data", default=None,
                   help="corpus to score, a hub name or folder (default: the one the run trained on)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, ckpt = load_model(args.run, device)
        corpus = load_corpus(args.data or ckpt["data"])
        check_vocab(corpus, ckpt)
        batch_size = args.batch_size or (1 if args.split == "test" else 10)
        bptt = args.bptt or ckpt["train_config"]["bptt"]
        if batch_size < 1 or bptt < 1:
            raise DataError("--batch-size and --bptt must be positive")
        source = batchify(corpus.split(args.split), batch_size, device)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    loss = evaluate(model, source, bptt, progress=True)
    seconds = time.time() - t0
    tokens = (source.size(0) - 1) * source.size(1)
    result = {"run": str(args.run), "split": args.split, "loss": loss, "ppl": math.exp(loss),
              "tokens": tokens, "batch_size": batch_size, "bptt": bptt,
              "epoch": ckpt["state"]["epoch"], "seconds": round(seconds, 2)}
    print(f"{args.split} loss {loss:.4f} | ppl {math.exp(loss):.2f} | {tokens:,} tokens | "
          f"batch {batch_size} | bptt {bptt} | {tokens / seconds:,.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
