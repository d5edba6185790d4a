"""Train a word-level recurrent language model.

    python train.py --data ../shared/data/wikitext-2 --epochs 6 --save checkpoints/wt2-small
    python train.py --resume checkpoints/wt2-small --epochs 10    # continue, possibly longer

The run directory gets model.pt (best validation loss), last.pt (latest state, for --resume),
metrics.jsonl (one line per epoch) and config.json. Ctrl-C stops after the current batch and
saves last.pt; --resume continues from exactly there.
"""
import argparse
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import (
    BEST,
    CONFIG,
    LAST,
    METRICS,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from data import DataError, batchify, get_batch, load_corpus
from evaluate import evaluate
from model import RNN_TYPES, ModelConfig, build_model, detach_hidden

# Defaults live here rather than in the parser, so that flags given on the command line can be
# told apart from defaults: on --resume only explicit flags override the saved config.
DEFAULTS = {
    "data": "wikitext-2", "model": "lstm", "emsize": 200, "nhid": 200, "nlayers": 2, "dropout": 0.2,
    "tied": False, "optimizer": "sgd", "lr": None, "anneal": 4.0, "wdecay": 0.0, "clip": 0.25,
    "epochs": 40, "batch_size": 20, "eval_batch_size": 10, "bptt": 35, "seed": 1111, "device": None,
    "save": None, "max_batches": None, "log_interval": 200,
}
DEFAULT_LR = {"sgd": 20.0, "adam": 1e-3, "adamw": 1e-3}
# Flags that may change when a run is resumed; the rest would make it a different run.
RESUMABLE = {"epochs", "device", "max_batches", "log_interval"}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(flag, help, **kw):
        dest = flag.lstrip("-").replace("-", "_")
        default = DEFAULTS[dest]
        shown = "" if default is None else f" (default: {default})"
        p.add_argument(flag, default=None, help=help + shown, **kw)

    add("--data", "hub dataset (wikitext-2, wikitext-103, ptb) or a folder with "
                  "train.txt/valid.txt/test.txt")
    add("--model", "recurrent cell", choices=RNN_TYPES)
    add("--emsize", "embedding size", type=int)
    add("--nhid", "hidden units per layer", type=int)
    add("--nlayers", "number of recurrent layers", type=int)
    add("--dropout", "dropout on the embedding, between layers and on the output", type=float)
    add("--tied", "tie the decoder weight to the embedding (needs --nhid == --emsize)",
        action=argparse.BooleanOptionalAction)
    add("--optimizer", "sgd (plain, as in the classic baseline), adam or adamw",
        choices=tuple(DEFAULT_LR))
    add("--lr", "initial learning rate (default: 20 for sgd, 0.001 for adam/adamw)", type=float)
    add("--anneal", "divide the lr by this whenever validation loss does not improve", type=float)
    add("--wdecay", "weight decay", type=float)
    add("--clip", "clip the gradient norm to this (0: no clipping)", type=float)
    add("--epochs", "last epoch to train (on --resume, may be raised to train longer)", type=int)
    add("--batch-size", "training batch size (parallel token streams)", type=int)
    add("--eval-batch-size", "batch size of the validation pass each epoch", type=int)
    add("--bptt", "tokens per truncated-BPTT window", type=int)
    add("--seed", "random seed", type=int)
    add("--device", "cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    add("--save", "run directory (default: checkpoints/<data>-<model>-<time>)")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR from its last.pt; its saved config is used, and "
                        f"only {', '.join('--' + f.replace('_', '-') for f in sorted(RESUMABLE))} "
                        "may be changed")
    add("--max-batches", "train at most this many batches per epoch (for smoke runs)", type=int)
    add("--log-interval", "batches between progress-bar updates (each costs a host sync)", type=int)
    return p


class ConfigError(Exception):
    """A bad combination of flags, reported as one line."""


def resolve_config(argv=None):
    """Parse argv into a complete config dict; on --resume, the saved config plus overrides."""
    given = {k: v for k, v in vars(get_parser().parse_args(argv)).items() if v is not None}
    resume = given.pop("resume", None)
    if resume is None:
        cfg = {**DEFAULTS, **given}
        if cfg["lr"] is None:
            cfg["lr"] = DEFAULT_LR[cfg["optimizer"]]
        if cfg["device"] is None:
            cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg["save"] is None:
            name = Path(cfg["data"]).name or "data"
            cfg["save"] = f"checkpoints/{name}-{cfg['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
        for key in ("epochs", "batch_size", "eval_batch_size", "bptt", "log_interval"):
            if cfg[key] < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {cfg[key]}")
        if cfg["max_batches"] is not None and cfg["max_batches"] < 1:
            raise ConfigError("--max-batches must be at least 1")
        return cfg, None
    ckpt = load_checkpoint(resume, LAST)
    saved = ckpt["train_config"]
    fixed = sorted(k for k, v in given.items() if k not in RESUMABLE and v != saved.get(k))
    if fixed:
        raise ConfigError(f"--{fixed[0].replace('_', '-')} cannot change on --resume (the run "
                          f"used {saved.get(fixed[0])!r}); start a new run with --save instead")
    return {**saved, **given, "save": str(resume)}, ckpt


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so that --resume is exact."""
    epoch: int = 0  # epochs finished
    step: int = 0  # batches finished in the epoch under way (0 at an epoch boundary)
    lr: float = 0.0
    best_val_loss: float = math.inf
    train_loss_sum: float = 0.0  # token-weighted loss of those `step` batches
    train_tokens: int = 0
    seconds: float = 0.0  # training and validation time, summed over sessions


class StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the current batch and save; a second aborts."""

    def __enter__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: saving after this batch (press again to abort without saving)", file=sys.stderr)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def make_optimizer(model, cfg):
    params, lr, wd = model.parameters(), cfg["lr"], cfg["wdecay"]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def train_step(model, x, y, hidden, optimizer, clip):
    """One truncated-BPTT update; returns the batch's mean loss (a tensor, no host sync)."""
    hidden = detach_hidden(hidden)
    logits, hidden = model(x, hidden)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach(), hidden


def train_epoch(model, source, optimizer, cfg, state, hidden, stop):
    """Train from batch state.step to the end of the epoch, or until Ctrl-C.

    Updates state.step and the loss sums in place; returns the recurrent state, which a
    mid-epoch checkpoint must keep for an exact resume.
    """
    model.train()
    nbatches = math.ceil((source.size(0) - 1) / cfg["bptt"])
    if cfg["max_batches"]:
        nbatches = min(nbatches, cfg["max_batches"])
    loss_sum = torch.tensor(state.train_loss_sum, dtype=torch.float64, device=source.device)
    tokens = state.train_tokens
    bar = tqdm(total=nbatches, initial=state.step, desc=f"epoch {state.epoch + 1}",
               dynamic_ncols=True, leave=False, mininterval=0.5 if sys.stderr.isatty() else 60)
    t0, tokens0 = time.time(), tokens
    for b in range(state.step, nbatches):
        x, y = get_batch(source, b * cfg["bptt"], cfg["bptt"])
        loss, hidden = train_step(model, x, y, hidden, optimizer, cfg["clip"])
        loss_sum += loss * y.numel()
        tokens += y.numel()
        bar.update()
        state.step = b + 1
        if state.step % cfg["log_interval"] == 0 or state.step == nbatches or stop.requested:
            mean = loss_sum.item() / tokens
            if not math.isfinite(mean):
                raise FloatingPointError(f"training loss is {mean} at epoch {state.epoch + 1}, "
                                         f"batch {state.step}; lower --lr or --clip")
            bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.1f}",
                            tok_s=f"{(tokens - tokens0) / (time.time() - t0):,.0f}")
        if stop.requested:
            break
    bar.close()
    state.train_loss_sum, state.train_tokens = loss_sum.item(), tokens
    return hidden


def make_checkpoint(model, optimizer, cfg, corpus, state, hidden=None):
    return {
        "model": model.state_dict(),
        "model_config": model.cfg.to_dict(),
        "optimizer": optimizer.state_dict(),
        "train_config": cfg,
        "state": asdict(state),
        "vocab": corpus.itos,
        "data": corpus.source,
        "data_fingerprint": corpus.fingerprint,
        # Mid-epoch only: the recurrent state that the next batch continues from.
        "hidden": hidden,
        "rng": {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def restore_rng(rng):
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def start_run(cfg, resumed):
    """Build everything a run needs, fresh or from a resumed checkpoint."""
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but PyTorch sees no CUDA GPU here; use --device cpu")
    corpus = load_corpus(cfg["data"])
    run_dir = Path(cfg["save"])
    if resumed is None:
        if (run_dir / LAST).exists():
            raise ConfigError(f"{run_dir} already holds a run: pass --resume {run_dir} to continue "
                              "it, or choose another --save")
        torch.manual_seed(cfg["seed"])
        try:
            model_cfg = ModelConfig(vocab_size=len(corpus.itos), model=cfg["model"],
                                    emsize=cfg["emsize"], nhid=cfg["nhid"], nlayers=cfg["nlayers"],
                                    dropout=cfg["dropout"], tied=cfg["tied"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        model = build_model(model_cfg).to(device)
        optimizer = make_optimizer(model, cfg)
        state = TrainState(lr=cfg["lr"])
        hidden = None
    else:
        if corpus.itos != resumed["vocab"]:
            raise ConfigError(f"the data at {corpus.source} no longer matches the run's vocabulary")
        model = build_model(ModelConfig.from_dict(resumed["model_config"])).to(device)
        model.load_state_dict(resumed["model"])
        optimizer = make_optimizer(model, cfg)
        optimizer.load_state_dict(resumed["optimizer"])
        state = TrainState(**resumed["state"])
        hidden = resumed["hidden"]
        if hidden is not None:
            hidden = tuple(h.to(device) for h in hidden) if isinstance(hidden, (tuple, list)) \
                else hidden.to(device)
        restore_rng(resumed["rng"])
    run_dir.mkdir(parents=True, exist_ok=True)
    return corpus, model, optimizer, state, hidden, run_dir


def append_metrics(run_dir, row):
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(run_dir, epochs_done):
    """Drop log lines of epochs after the checkpoint, e.g. from a crash between log and save."""
    path = run_dir / METRICS
    if path.exists():
        rows = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["epoch"] <= epochs_done]
        path.write_text("".join(r + "\n" for r in rows))


def fit(cfg, resumed=None):
    """Train according to cfg; returns 0 when finished and 130 when stopped by Ctrl-C."""
    corpus, model, optimizer, state, hidden, run_dir = start_run(cfg, resumed)
    device = next(model.parameters()).device
    train_data = batchify(corpus.train, cfg["batch_size"], device)
    val_data = batchify(corpus.valid, cfg["eval_batch_size"], device)
    (run_dir / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    truncate_metrics(run_dir, state.epoch)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{corpus.source}: {len(corpus.itos):,} words, {len(corpus.train):,} train tokens | "
          f"{nparams:,} parameters | {device} | run dir {run_dir}")

    with StopOnInterrupt() as stop:
        for epoch in range(state.epoch + 1, cfg["epochs"] + 1):
            t0, tokens0 = time.time(), state.train_tokens
            if state.step == 0:
                hidden = model.init_hidden(cfg["batch_size"])
            hidden = train_epoch(model, train_data, optimizer, cfg, state, hidden, stop)
            train_seconds = time.time() - t0
            if stop.requested:  # mid-epoch: keep the recurrent state for an exact resume
                state.seconds += time.time() - t0
                save_checkpoint(make_checkpoint(model, optimizer, cfg, corpus, state, hidden),
                                run_dir / LAST)
                print(f"stopped in epoch {epoch} after batch {state.step}; resume with "
                      f"python train.py --resume {run_dir}")
                return 130
            val_loss = evaluate(model, val_data, cfg["bptt"])
            train_loss = state.train_loss_sum / state.train_tokens
            improved = val_loss < state.best_val_loss
            row = {"epoch": epoch, "train_loss": train_loss, "train_ppl": math.exp(train_loss),
                   "val_loss": val_loss, "val_ppl": math.exp(val_loss), "lr": state.lr,
                   "epoch_seconds": round(time.time() - t0, 2),
                   "train_tokens_per_s": round((state.train_tokens - tokens0) / train_seconds, 1)}
            state.epoch, state.step = epoch, 0
            state.train_loss_sum, state.train_tokens = 0.0, 0
            state.seconds += time.time() - t0
            if improved:
                state.best_val_loss = val_loss
                save_checkpoint(make_checkpoint(model, optimizer, cfg, corpus, state), run_dir / BEST)
            else:  # plateau: anneal the lr for the next epoch
                state.lr /= cfg["anneal"]
                for group in optimizer.param_groups:
                    group["lr"] = state.lr
            save_checkpoint(make_checkpoint(model, optimizer, cfg, corpus, state), run_dir / LAST)
            append_metrics(run_dir, row)
            print(f"epoch {epoch:3d} | train ppl {row['train_ppl']:8.2f} | val loss {val_loss:.4f} | "
                  f"val ppl {row['val_ppl']:8.2f} | lr {row['lr']:g} | {row['epoch_seconds']:.0f}s"
                  + (" | saved best" if improved else ""))
            if stop.requested:
                print(f"stopped after epoch {epoch}; resume with python train.py --resume {run_dir}")
                return 130
    print(f"done: best val ppl {math.exp(state.best_val_loss):.2f} | {state.seconds / 60:.1f} min | "
          f"evaluate with python evaluate.py {run_dir}")
    return 0


def main(argv=None):
    try:
        cfg, resumed = resolve_config(argv)
        print(json.dumps(cfg, indent=2))
        return fit(cfg, resumed)
    except (ConfigError, CheckpointError, DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
