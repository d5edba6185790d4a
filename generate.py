"""Sample text from a trained run, word- or character-level.

    python generate.py checkpoints/<run> --temperature 0.8 --words 100 --prompt "the meaning of" --seed 1
    python generate.py checkpoints/<char-run> --temperature 0.7 --chars 500 --prompt "ROMEO:" --seed 1

The prompt is read by the model first and printed as given. At word level <eos> prints as a
newline; at character level the characters are printed as they are. A recurrent model reads each
token once and carries its state; a Transformer, which has none, reads at each step the last
tokens of the text so far that fit its context window.
"""
import argparse
import math
import sys

import torch

from data import EOS, UNK
from lm import cli, faults
from lm.checkpoint import checkpoint_level, load_model


def filter_logits(logits, top_k=0, top_p=1.0):
    """Set to -inf every logit outside the top k and outside the smallest set of mass >= top_p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop = cum - torch.softmax(sorted_logits, -1) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model, prompt_ids, n, temperature=1.0, top_k=0, top_p=1.0, generator=None, eos_id=0):
    """Read prompt_ids (or the lone token eos_id when empty), then sample n ids, one at a time. A
    recurrent model is fed each new token with its carried state; a model without state
    (model.context_window set) the last context_window tokens of the text so far at every step."""
    model.eval()
    device = next(model.parameters()).device
    text = list(prompt_ids or [eos_id])
    window = model.context_window
    feed = text if window is None else text[-window:]
    hidden = model.init_hidden(1)
    sampled = []
    for _ in range(n):
        out = model(torch.tensor(feed, device=device).view(-1, 1), hidden)  # (seq_len, batch=1)
        hidden = out.hidden
        logits = filter_logits(out.logits[-1, 0].float() / temperature, top_k, top_p)
        probs = torch.softmax(logits, -1)
        next_id = torch.multinomial(probs.cpu(), 1, generator=generator).item()
        sampled.append(next_id)
        faults.point("sampling")
        text.append(next_id)
        feed = [next_id] if window is None else text[-window:]
    return sampled


def detokenize(words):
    """Join words with spaces, with <eos> as a line break."""
    lines, line = [], []
    for w in words:
        if w == EOS:
            lines.append(" ".join(line))
            line = []
        else:
            line.append(w)
    return "\n".join(lines + [" ".join(line)])


def encode_chars(prompt, stoi):
    """Prompt characters -> ids; a character the model never saw in training is an error."""
    missing = sorted(set(prompt) - stoi.keys())
    if missing:
        raise cli.UserError(f"prompt characters not in the model's vocabulary: "
                            f"{', '.join(repr(c) for c in missing)}; it has {len(stoi)} characters: "
                            f"{''.join(sorted(stoi))!r}")
    return [stoi[c] for c in prompt]


def encode_prompt(prompt, stoi):
    """Prompt words -> ids, with out-of-vocabulary words as <unk> (and a warning)."""
    words = prompt.split()
    missing = [w for w in words if w not in stoi]
    if missing and UNK not in stoi:
        raise cli.UserError(f"prompt words not in the vocabulary, which has no {UNK}: "
                            f"{', '.join(missing)}")
    if missing:
        print(f"warning: not in the vocabulary, read as {UNK}: {', '.join(missing)}", file=sys.stderr)
    return [stoi.get(w, stoi.get(UNK)) for w in words]


def get_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory written by train.py (or a checkpoint file in it)")
    p.add_argument("--words", "--chars", dest="length", type=cli.count, default=None,
                   help="number of tokens to sample, whichever of the two names is used: words for a "
                        "word-level run, characters for a character-level one (default: 100 words or "
                        "500 characters)")
    p.add_argument("--prompt", default="", help="text the model reads before sampling (default: none)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divide the logits by this; < 1 is more conservative, must be > 0 (default: 1)")
    p.add_argument("--top-k", type=int, default=0, help="sample only among the k likeliest tokens (default: 0, off)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample only among the likeliest tokens whose mass reaches p (default: 1, off)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible samples (default: random)")
    p.add_argument("--device", default="cpu", help=f"{cli.DEVICES} (default: cpu)")
    return p


@cli.user_errors
def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if not 0 < args.temperature < math.inf:
        parser.error(f"--temperature must be > 0 and finite, got {args.temperature}")
    if args.top_k < 0 or not 0 < args.top_p <= 1:
        parser.error("--top-k must be >= 0 and --top-p in (0, 1]")
    cli.check_device(args.device)
    model, ckpt = load_model(args.run, args.device)
    itos = ckpt["vocab"]
    stoi = {w: i for i, w in enumerate(itos)}
    char = checkpoint_level(ckpt) == "char"
    prompt_ids = encode_chars(args.prompt, stoi) if char else encode_prompt(args.prompt, stoi)
    generator = torch.Generator()
    if args.seed is None:
        generator.seed()
    else:
        generator.manual_seed(args.seed)
    length = args.length if args.length is not None else (500 if char else 100)
    # With no prompt, a word model starts after an <eos> and a character model after a newline.
    start = stoi.get("\n", 0) if char else stoi[EOS]
    ids = generate(model, prompt_ids, length, args.temperature, args.top_k, args.top_p, generator, start)
    if char:
        print(args.prompt + "".join(itos[i] for i in ids))
    else:
        print(detokenize(args.prompt.split() + [itos[i] for i in ids]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
