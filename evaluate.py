"""Loss, perplexity and next-token accuracy of a trained run on any split (bits per character too
for character-level runs).

    python evaluate.py checkpoints/<run>                  # test split, batch size 1
    python evaluate.py checkpoints/<run> --split valid --json valid.json
    python evaluate.py checkpoints/<char-run> --split valid+test   # the last 10%, nanoGPT's val split
"""
import argparse
import json
import math
import sys
import time
from typing import NamedTuple

import torch
from tqdm import tqdm

from checkpoint import CheckpointError, check_vocab, checkpoint_level, load_model
from data import DataError, batchify, get_batch, load_corpus
from kernels import DTYPES, Workspace, autocast


class Scores(NamedTuple):
    loss: float  # mean cross-entropy, nats per token
    accuracy: float  # fraction of tokens whose most likely prediction is right

    @property
    def bits(self):
        """Mean cross-entropy in bits per token (bits per character at char level)."""
        return self.loss / math.log(2)

    @property
    def ppl(self):
        return math.exp(self.loss)


def score_batch(model, x, y, hidden, dtype, workspace=None):
    """One window without gradients: (summed nats, correct predictions, new hidden state)."""
    with autocast(x.device, dtype):
        return model.score(x, y, hidden, workspace)


EVAL_TOKENS = 20_000  # tokens per forward call of evaluation, whatever the batch size


def eval_window(batch_size):
    """Rows per forward call when evaluating at batch_size: long windows make the input
    projections and the decoder large matmuls (much faster than 70-token windows at batch 1; see
    the README's speed section); they cannot change the result, only its float rounding."""
    return max(1, EVAL_TOKENS // batch_size)


@torch.no_grad()
def evaluate(model, source, dtype="fp32", window=None, progress=False):
    """Scores of a model over a batchified source, shape (rows, batch).

    The recurrent state is carried from one window to the next, so every token after the first
    of a column is predicted with the whole column before it as context, and the window length
    (default: eval_window) changes only how many tokens each forward call takes. One host sync
    at the end.
    """
    model.eval()
    hidden = model.init_hidden(source.size(1))
    nats = torch.zeros((), dtype=torch.float64, device=source.device)
    correct = torch.zeros((), dtype=torch.float64, device=source.device)
    window = window or eval_window(source.size(1))
    starts, workspace = range(0, source.size(0) - 1, window), Workspace()
    bar = tqdm(starts, desc="eval", disable=not progress, leave=False,
               mininterval=0.5 if sys.stderr.isatty() else 60)
    for i in bar:
        x, y = get_batch(source, i, window)
        n, c, hidden = score_batch(model, x, y, hidden, dtype, workspace)
        nats += n
        correct += c
    tokens = (source.size(0) - 1) * source.size(1)
    return Scores(nats.item() / tokens, correct.item() / tokens)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="fp32, or bf16 autocast (faster where the hardware has bf16; its logits are "
                        "rounded to bf16, so the loss can differ in the 3rd-4th digit) (default: fp32)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to FILE as JSON")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, ckpt = load_model(args.run, device)
        level = checkpoint_level(ckpt)
        corpus = load_corpus(args.data or ckpt["data"], level)
        check_vocab(corpus, ckpt)
        batch_size = args.batch_size or (10 if args.split in ("valid", "train") else 1)
        window = args.window or eval_window(batch_size)
        if batch_size < 1 or window < 1:
            raise DataError("--batch-size and --window must be positive")
        source = batchify(corpus.split(args.split), batch_size, device)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    scores = evaluate(model, source, args.dtype, window, progress=True)
    seconds = time.time() - t0
    tokens = (source.size(0) - 1) * source.size(1)
    result = {"run": str(args.run), "split": args.split, "level": level, "loss": scores.loss,
              "ppl": scores.ppl, "accuracy": scores.accuracy, "tokens": tokens, "batch_size": batch_size,
              "window": window, "dtype": args.dtype, "epoch": ckpt["state"]["epoch"], "seconds": round(seconds, 2)}
    bits = ""
    if level == "char":
        result["bpc"] = scores.bits
        bits = f" | bpc {scores.bits:.4f}"
    print(f"{args.split} loss {scores.loss:.4f} nats/{level}{bits} | ppl {scores.ppl:.2f} | "
          f"accuracy {scores.accuracy:.2%} | {tokens:,} tokens | batch {batch_size} | window {window} | "
          f"{args.dtype} | {tokens / seconds:,.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
