"""Train a recurrent language model on words or characters: the classic baseline or AWD-LSTM.

    python train.py --data ../shared/data/wikitext-2 --epochs 6 --save checkpoints/wt2-small
    python train.py --level char --data ../shared/data/tinyshakespeare/input.txt --save checkpoints/shakespeare
    python train.py --preset awd-lstm-wt2 --data ../shared/data/wikitext-2 --save checkpoints/awd
    python train.py --finetune checkpoints/awd          # AWD-LSTM's second stage, into awd-finetune
    python train.py --resume checkpoints/wt2-small --epochs 10    # continue, possibly longer

The run directory gets model.pt (best validation loss; averaged weights once NT-ASGD averages),
last.pt (latest state, for --resume), metrics.jsonl (one line per epoch), config.json and, with --plot,
curves.png.
Ctrl-C stops after the current batch and saves last.pt; --resume continues from exactly there.
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
from tqdm import tqdm

from checkpoint import BEST, CONFIG, LAST, METRICS, CheckpointError, load_checkpoint, save_checkpoint
from data import LEVELS, DataError, batchify, get_batch, load_corpus
from evaluate import check_vocab, evaluate
from model import (DTYPES, LSTM_KERNELS, MODEL_TYPES, AWDConfig, ModelConfig, Workspace,
                   activation_regularization, autocast, bf16_is_fast, build_model, config_from_dict,
                   detach_hidden, linear_cross_entropy, map_hidden, temporal_activation_regularization)
from optim import Averaging, nonmonotone_trigger, sample_seq_len, scaled_lr, scheduled_lr
from plot import PlotError, plot_runs

# Defaults live here rather than in the parser, so that flags given on the command line can be
# told apart from defaults: explicit flags override presets and, on --resume, the saved config.
DEFAULTS = {
    "data": "wikitext-2", "model": "lstm", "emsize": 200, "nhid": 200, "nlayers": 2, "dropout": 0.2,
    "dropout_embedding": None, "dropout_input": None, "dropout_hidden": None, "dropout_output": None,
    "dropout_weight": None, "locked_dropout": None, "tied": False,
    "optimizer": "sgd", "lr": None, "schedule": None, "warmup": 0.0, "anneal": 4.0, "nonmono": 5,
    "adam_betas": [0.9, 0.999], "wdecay": 0.0, "clip": 0.25, "alpha": 0.0, "beta": 0.0,
    "epochs": 40, "batch_size": 20, "eval_batch_size": 10, "bptt": 35, "variable_bptt": False,
    "seed": 1111, "device": None, "save": None, "max_batches": None, "max_minutes": None,
    "log_interval": 200, "dtype": None, "level": "word", "plot": False, "lstm_kernel": "auto",
}
# AWD-LSTM's defaults (the paper's code's), applied under --model awd-lstm.
AWD_DEFAULTS = {
    "emsize": 400, "nhid": 1150, "nlayers": 3, "dropout": None, "dropout_embedding": 0.1,
    "dropout_input": 0.65, "dropout_hidden": 0.3, "dropout_output": 0.4, "dropout_weight": 0.5,
    "locked_dropout": True, "tied": True, "optimizer": "nt-asgd", "wdecay": 1.2e-6, "alpha": 2.0,
    "beta": 1.0, "batch_size": 80, "bptt": 70, "variable_bptt": True, "epochs": 750,
}
# Character-level defaults, applied under --level char (see the README's "Characters" section).
# Characters are few (65 in Tiny Shakespeare) and each carries little information, so: Adam at
# lr 2e-3 (as char-rnn) rather than SGD at lr 20, 100-character BPTT windows, a looser clip, and
# none of the word-level regularizers that act on a whole token type (embedding dropout would
# delete every "e" of a batch; tying a 65-row decoder saves nothing). AWD-LSTM keeps its locked
# dropout, weight drop and AR/TAR at milder rates, near Merity et al. 2018's character-level PTB
# settings (dropouti 0.1, dropouth 0.25, dropout 0.1, dropoute 0), with a weight drop of 0.3 for
# a 2x512 model that trains for minutes rather than days.
CHAR_DEFAULTS = {
    "data": "tinyshakespeare", "emsize": 128, "nhid": 512, "nlayers": 2, "dropout": 0.2,
    "optimizer": "adam", "lr": 2e-3, "clip": 1.0, "batch_size": 64, "bptt": 100, "epochs": 30, "tied": False,
}
CHAR_AWD_DEFAULTS = {
    **CHAR_DEFAULTS, "dropout": None, "dropout_embedding": 0.0, "dropout_input": 0.1,
    "dropout_hidden": 0.25, "dropout_output": 0.1, "dropout_weight": 0.3, "variable_bptt": True,
}
PRESETS = {
    # Merity et al.'s WikiText-2 command: 750 epochs, dropouth 0.2, seed 1882.
    "awd-lstm-wt2": {"model": "awd-lstm", "data": "wikitext-2", "dropout_hidden": 0.2, "seed": 1882},
    # Their PTB command: batch 20, dropouti 0.4, dropouth 0.25, seed 141, 500 epochs.
    "awd-lstm-ptb": {"model": "awd-lstm", "data": "ptb", "batch_size": 20, "dropout_input": 0.4,
                     "dropout_hidden": 0.25, "seed": 141, "epochs": 500},
    # The fast recipe: Adam, batch 100, clip 0.12, one-cycle over 90 epochs (reported by fast.ai
    # to reach 68.7/65.5 val/test on WikiText-2); betas (0.7, 0.99) as in fast.ai's LM recipes.
    "awd-lstm-adam": {"model": "awd-lstm", "data": "wikitext-2", "dropout_hidden": 0.2,
                      "seed": 1882, "optimizer": "adam", "lr": 3e-3, "adam_betas": [0.7, 0.99],
                      "schedule": "onecycle", "warmup": 0.25, "batch_size": 100, "clip": 0.12,
                      "epochs": 90},
}
DEFAULT_LR = {"sgd": 20.0, "nt-asgd": 30.0, "adam": 1e-3, "adamw": 1e-3}
AWD_ONLY = ("dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output", "dropout_weight",
            "locked_dropout")
# Flags that may change when a run is resumed; the rest would make it a different run.
RESUMABLE = {"epochs", "device", "dtype", "max_batches", "max_minutes", "log_interval", "plot", "lstm_kernel"}
# Flags added after runs were first saved, with the value that those older runs used.
LATER_FLAGS = {"dtype": "fp32", "level": "word", "plot": False, "lstm_kernel": "auto"}
# Flags that --finetune may not change: they define the model being fine-tuned.
MODEL_FLAGS = {"data", "level", "model", "emsize", "nhid", "nlayers", "dropout", "tied", *AWD_ONLY}


def flag(key):
    return "--" + key.replace("_", "-")


def base_defaults(awd, char):
    """The defaults of a run before presets and flags: DEFAULTS, then AWD-LSTM's for awd-lstm,
    then the character defaults for --level char."""
    char_table = (CHAR_AWD_DEFAULTS if awd else CHAR_DEFAULTS) if char else {}
    return {**DEFAULTS, **(AWD_DEFAULTS if awd else {}), **char_table}


# Kinds of run with their own defaults, as (awd, char), named as --help names them.
KINDS = {"awd-lstm": (True, False), "char": (False, True), "char awd-lstm": (True, True)}


def default_note(key):
    """' (default: ...)' for --help: the plain default, then each kind of run's default where it
    differs from a kind that it refines (char awd-lstm refines both awd-lstm and char)."""
    shown = {}  # value -> kinds that default to it
    for kind, (awd, char) in KINDS.items():
        value = base_defaults(awd, char)[key]
        refined = [base_defaults(False, char)[key], base_defaults(awd, False)[key]]
        if value is not None and any(value != r for r in refined):
            shown.setdefault(str(value), []).append(kind)
    parts = [] if DEFAULTS[key] is None else [str(DEFAULTS[key])]
    parts += [f"{value} for {' and '.join(kinds)}" for value, kinds in shown.items()]
    return f" (default: {', '.join(parts)})" if parts else ""


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(group, key, help, **kw):
        group.add_argument(flag(key), default=None, help=help + default_note(key), **kw)

    g = p.add_argument_group("data and model")
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="a published configuration; explicit flags override its values: "
                        + "; ".join(f"{name}: " + " ".join(f"{flag(k)} {v}" for k, v in preset.items())
                                    for name, preset in PRESETS.items()))
    add(g, "data", "hub dataset (wikitext-2, wikitext-103, ptb, tinyshakespeare) or a folder with "
                "train.txt/valid.txt/test.txt; with --level char also one text file, cut 90/5/5")
    add(g, "level", "tokens are words (split on whitespace, <eos> per line) or characters", choices=LEVELS)
    add(g, "model", "recurrent model: a baseline cell or AWD-LSTM", choices=MODEL_TYPES)
    add(g, "emsize", "embedding size (awd-lstm: also its last layer's size when tied)", type=int)
    add(g, "nhid", "hidden units per layer (awd-lstm: all layers but the last)", type=int)
    add(g, "nlayers", "number of recurrent layers", type=int)
    add(g, "tied", "tie the decoder weight to the embedding (baseline: needs --nhid == --emsize)",
        action=argparse.BooleanOptionalAction)
    add(g, "dropout", "baseline only: dropout on the embedding, between layers and on the output", type=float)
    add(g, "dropout_embedding", "awd-lstm: fraction of words dropped from the embedding matrix "
                             "(the paper's embedding dropout, dropoute)", type=float)
    add(g, "dropout_input", "awd-lstm: locked dropout on the embedding output (dropouti)", type=float)
    add(g, "dropout_hidden", "awd-lstm: locked dropout between LSTM layers (dropouth)", type=float)
    add(g, "dropout_output", "awd-lstm: locked dropout on the last LSTM output (dropout)", type=float)
    add(g, "dropout_weight", "awd-lstm: DropConnect on hidden-to-hidden weights (the paper's weight "
                          "drop, wdrop); 0 turns weight drop off", type=float)
    add(g, "locked_dropout", "awd-lstm: one dropout mask per sequence, shared over time (variational); "
                          "--no-locked-dropout draws a new mask per step", action=argparse.BooleanOptionalAction)

    g = p.add_argument_group("optimization")
    add(g, "optimizer", "sgd (plain), nt-asgd (SGD, then averaging by the non-monotone trigger), adam, adamw",
        choices=tuple(DEFAULT_LR))
    add(g, "lr", "initial learning rate; at word level 20 for sgd, 30 for nt-asgd, 0.001 for adam/adamw",
        type=float)
    add(g, "schedule", "lr schedule: plateau (divide by --anneal when validation does not improve), "
                    "constant, cosine or onecycle (default: constant for nt-asgd, else plateau)",
        choices=("plateau", "constant", "cosine", "onecycle"))
    add(g, "warmup", "cosine/onecycle: fraction of training spent warming the lr up", type=float)
    add(g, "anneal", "plateau: divide the lr by this when validation loss does not improve", type=float)
    add(g, "nonmono", "nt-asgd: the non-monotone window (epochs) of the averaging trigger", type=int)
    add(g, "adam_betas", "adam/adamw: beta1 beta2", type=float, nargs=2, metavar=("B1", "B2"))
    add(g, "wdecay", "weight decay", type=float)
    add(g, "clip", "clip the gradient norm to this (0: no clipping)", type=float)
    add(g, "alpha", "AR: weight of the mean squared dropped last-layer output (0: off)", type=float)
    add(g, "beta", "TAR: weight of the mean squared step-to-step change of the last-layer output (0: off)",
        type=float)
    add(g, "epochs", "last epoch to train (on --resume, may be raised to train longer)", type=int)
    add(g, "batch_size", "training batch size (parallel token streams)", type=int)
    add(g, "eval_batch_size", "batch size of the validation pass each epoch", type=int)
    add(g, "bptt", "tokens per truncated-BPTT window (the mean one with --variable-bptt)", type=int)
    add(g, "variable_bptt", "draw each window's length around --bptt and scale the lr by length/bptt",
        action=argparse.BooleanOptionalAction)

    g = p.add_argument_group("run")
    add(g, "seed", "random seed", type=int)
    add(g, "device", "cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    add(g, "dtype", "compute precision: fp32, or bf16 autocast with fp32 master weights (default: bf16 "
                 "where the device runs it natively, i.e. CUDA with bf16 or a CPU with AVX512-BF16/AMX, "
                 "else fp32)", choices=DTYPES)
    add(g, "lstm_kernel", "how AWD-LSTM's layers run: fused (torch.lstm: oneDNN, cuDNN), own (our "
                       "recurrence with a hand-written backward), or auto: own for bf16 training on "
                       "CPU where its time steps are large enough to gain, fused elsewhere", choices=LSTM_KERNELS)
    add(g, "save", "run directory (default: checkpoints/<data>-<model>-<time>; <run>-finetune with --finetune)")
    g.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR from its last.pt; its saved config is used, and only "
                        f"{', '.join(flag(k) for k in sorted(RESUMABLE))} may be changed")
    g.add_argument("--finetune", metavar="DIR", default=None,
                   help="AWD-LSTM's fine-tuning stage: start from DIR's best weights and train with "
                        "averaging from the first step until the non-monotone criterion holds")
    add(g, "max_batches", "train at most this many batches per epoch (for smoke runs)", type=int)
    add(g, "max_minutes", "stop after this much training time: the epoch under way is cut short, "
                       "validated and saved", type=float)
    add(g, "log_interval", "batches between progress-bar updates (each costs a host sync)", type=int)
    add(g, "plot", "when the run ends, draw its loss and accuracy curves into <run>/curves.png",
        action=argparse.BooleanOptionalAction)
    return p


def default_dtype(device):
    return "bf16" if bf16_is_fast(device) else "fp32"


class ConfigError(Exception):
    """A bad combination of flags, reported as one line."""


def fill_defaults(given):
    """Defaults < AWD-LSTM defaults (for awd-lstm) < character defaults (for --level char) <
    preset < explicit flags."""
    preset = PRESETS[given["preset"]] if given.get("preset") else {}
    model = given.get("model") or preset.get("model") or DEFAULTS["model"]
    cfg = {**base_defaults(model == "awd-lstm", given.get("level") == "char"), **preset,
           **{k: v for k, v in given.items() if k != "preset"}, "preset": given.get("preset")}
    if cfg["lr"] is None:
        cfg["lr"] = DEFAULT_LR[cfg["optimizer"]]
    if cfg["schedule"] is None:
        cfg["schedule"] = "constant" if cfg["optimizer"] == "nt-asgd" else "plateau"
    if cfg["device"] is None:
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg["dtype"] is None:
        cfg["dtype"] = default_dtype(cfg["device"])
    cfg["finetune"] = None
    return cfg


def check_config(cfg, given):
    if cfg.get("preset") and cfg["model"] != PRESETS[cfg["preset"]]["model"]:
        raise ConfigError(f"--preset {cfg['preset']} is for --model {PRESETS[cfg['preset']]['model']}")
    wrong = [k for k in (AWD_ONLY if cfg["model"] != "awd-lstm" else ("dropout",)) if k in given]
    if wrong:
        raise ConfigError(f"{flag(wrong[0])} does not apply to --model {cfg['model']}"
                          + ("; use --dropout-input/-hidden/-output" if wrong[0] == "dropout" else ""))
    for key in ("epochs", "batch_size", "eval_batch_size", "bptt", "log_interval", "nonmono"):
        if cfg[key] < 1:
            raise ConfigError(f"{flag(key)} must be at least 1, got {cfg[key]}")
    if cfg["max_batches"] is not None and cfg["max_batches"] < 1:
        raise ConfigError("--max-batches must be at least 1")
    if cfg["lstm_kernel"] != "auto" and cfg["model"] != "awd-lstm":
        raise ConfigError(f"--lstm-kernel applies to --model awd-lstm only, not {cfg['model']} "
                          "(the baseline runs PyTorch's own nn.LSTM/GRU/RNN)")
    if not 0 <= cfg["warmup"] < 1:
        raise ConfigError(f"--warmup must be in [0, 1), got {cfg['warmup']}")


def resolve_config(argv=None):
    """Parse argv into (config dict, checkpoint to start from or None, mode)."""
    given = {k: v for k, v in vars(get_parser().parse_args(argv)).items() if v is not None}
    resume, finetune = given.pop("resume", None), given.pop("finetune", None)
    if resume and finetune:
        raise ConfigError("--resume and --finetune exclude each other (a fine-tuning run is "
                          "resumed with --resume like any run)")
    if resume:
        ckpt = load_checkpoint(resume, LAST)
        saved = ckpt["train_config"]
        fixed = sorted(k for k, v in given.items() if k not in RESUMABLE and v != saved.get(k))
        if fixed:
            raise ConfigError(f"{flag(fixed[0])} cannot change on --resume (the run used "
                              f"{saved.get(fixed[0])!r}); start a new run with --save instead")
        return {**LATER_FLAGS, **saved, **given, "save": str(resume)}, ckpt, "resume"
    if finetune:
        ckpt = load_checkpoint(finetune, BEST)
        fixed = sorted(k for k in given if k in MODEL_FLAGS | {"preset"})
        if fixed:
            raise ConfigError(f"{flag(fixed[0])} cannot change with --finetune: the model comes "
                              f"from {finetune}")
        cfg = {**LATER_FLAGS, **ckpt["train_config"], "optimizer": "nt-asgd", "schedule": "constant",
               "lr": DEFAULT_LR["nt-asgd"], "save": str(Path(finetune)) + "-finetune", **given,
               "finetune": str(finetune)}
        check_config(cfg, given)
        return cfg, ckpt, "finetune"
    cfg = fill_defaults(given)
    check_config(cfg, given)
    if cfg["save"] is None:
        name = Path(cfg["data"]).stem or "data"
        level = "-char" if cfg["level"] == "char" else ""
        cfg["save"] = f"checkpoints/{name}{level}-{cfg['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, None, "new"


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so that --resume is exact."""
    epoch: int = 0  # epochs finished
    position: int = 0  # row of the training source where the next batch starts (0 at epoch start)
    batches: int = 0  # batches finished in the epoch under way
    lr: float = 0.0  # base lr of the plateau/constant schedules (annealed by plateau)
    best_val_loss: float = math.inf
    train_loss_sum: float = 0.0  # token-weighted loss of the epoch's batches so far
    train_tokens: int = 0
    seconds: float = 0.0  # training and validation time, summed over sessions
    finished: bool = False  # fine-tuning's stop criterion held


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
    if cfg["optimizer"] in ("sgd", "nt-asgd"):
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    opt = torch.optim.Adam if cfg["optimizer"] == "adam" else torch.optim.AdamW
    return opt(params, lr=lr, weight_decay=wd, betas=tuple(cfg["adam_betas"]))


def train_step(model, x, y, hidden, optimizer, cfg, lr_factor=1.0, workspace=None):
    """One truncated-BPTT update with AR/TAR; returns the batch's mean cross-entropy (a tensor,
    no host sync) and the new recurrent state. The lr is scaled by lr_factor for this step only;
    a Workspace kept by the caller saves re-allocating the loss's scratch memory."""
    with autocast(x.device, cfg["dtype"]):
        out = model(x, detach_hidden(hidden), decode=False)
        decoder = model.decoder
        raw_loss = linear_cross_entropy(out.dropped.flatten(0, 1), decoder.weight, decoder.bias,
                                        y.reshape(-1), workspace=workspace)
        loss = (raw_loss + activation_regularization(out.dropped, cfg["alpha"])
                + temporal_activation_regularization(out.raw, cfg["beta"]))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg["clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
    with scaled_lr(optimizer, lr_factor):
        optimizer.step()
    return raw_loss.detach(), out.hidden


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_epoch(model, source, optimizer, cfg, state, averaging, hidden, should_stop):
    """Train from row state.position to the end of the epoch, or until should_stop() is true.

    Updates state (position, batch count, loss sums) in place and folds every new iterate into
    the NT-ASGD average once it is active; returns the recurrent state, which a mid-epoch
    checkpoint keeps for an exact resume.
    """
    model.train()
    nrows = source.size(0) - 1
    max_batches = cfg["max_batches"] or math.inf
    loss_sum = torch.tensor(state.train_loss_sum, dtype=torch.float64, device=source.device)
    workspace = Workspace()
    # The bar counts tokens, so its rate is training tokens/s.
    bar = tqdm(total=nrows * source.size(1), initial=state.position * source.size(1), unit="tok",
               unit_scale=True, desc=f"epoch {state.epoch + 1}", dynamic_ncols=True, leave=False,
               mininterval=0.5 if sys.stderr.isatty() else 60)
    while state.position < nrows and state.batches < max_batches:
        seq_len = sample_seq_len(cfg["bptt"]) if cfg["variable_bptt"] else cfg["bptt"]
        x, y = get_batch(source, state.position, seq_len)
        if cfg["schedule"] in ("cosine", "onecycle"):
            progress = (state.epoch + state.position / nrows) / cfg["epochs"]
            set_lr(optimizer, scheduled_lr(cfg["schedule"], cfg["lr"], progress, cfg["warmup"]))
        factor = x.size(0) / cfg["bptt"] if cfg["variable_bptt"] else 1.0
        loss, hidden = train_step(model, x, y, hidden, optimizer, cfg, factor, workspace)
        if averaging.active:
            averaging.update(model)
        loss_sum += loss * y.numel()
        state.train_tokens += y.numel()
        state.position += x.size(0)
        state.batches += 1
        bar.update(y.numel())
        stop = should_stop()
        if state.batches % cfg["log_interval"] == 0 or stop:
            mean = checked_mean(loss_sum, state)
            bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.1f}")
        if stop:
            break
    bar.close()
    checked_mean(loss_sum, state)
    state.train_loss_sum = loss_sum.item()
    return hidden


def checked_mean(loss_sum, state):
    """Mean training loss so far (a host sync); a NaN or inf stops the run with advice."""
    mean = loss_sum.item() / max(1, state.train_tokens)
    if not math.isfinite(mean):
        raise FloatingPointError(f"training loss is {mean} at epoch {state.epoch + 1}, "
                                 f"batch {state.batches}; lower --lr or --clip")
    return mean


def make_checkpoint(model, optimizer, cfg, corpus, state, averaging, hidden=None, with_average=True):
    """Everything --resume needs. model.pt skips the running average (with_average=False): its
    "model" already holds the weights that were evaluated, averaged or not."""
    averaging_state = averaging.state_dict()
    if not with_average:
        averaging_state["average"] = {}
    return {
        "model": model.state_dict(),
        "model_config": model.cfg.to_dict(),
        "optimizer": optimizer.state_dict(),
        "train_config": cfg,
        "state": asdict(state),
        "averaging": averaging_state,
        "vocab": corpus.itos,
        "level": corpus.level,
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


def new_model(cfg, vocab_size):
    keys = ("model", "emsize", "nhid", "nlayers", "tied")
    keys += AWD_ONLY if cfg["model"] == "awd-lstm" else ("dropout",)
    config_cls = AWDConfig if cfg["model"] == "awd-lstm" else ModelConfig
    try:
        return build_model(config_cls(vocab_size=vocab_size, **{k: cfg[k] for k in keys}), cfg["lstm_kernel"])
    except ValueError as e:
        raise ConfigError(str(e)) from None


def start_run(cfg, ckpt, mode):
    """Build everything a run needs: fresh, resumed, or fine-tuning a finished run."""
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but PyTorch sees no CUDA GPU here; use --device cpu")
    corpus = load_corpus(cfg["data"], cfg["level"])
    run_dir = Path(cfg["save"])
    if mode != "resume" and (run_dir / LAST).exists():
        raise ConfigError(f"{run_dir} already holds a run: pass --resume {run_dir} to continue "
                          "it, or choose another --save")
    if ckpt is not None:
        check_vocab(corpus, ckpt)
    torch.manual_seed(cfg["seed"])
    if mode == "new":
        model = new_model(cfg, len(corpus.itos))
    else:
        try:
            model = build_model(config_from_dict(ckpt["model_config"]), cfg["lstm_kernel"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        model.load_state_dict(ckpt["model"])
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    state, averaging, hidden = TrainState(lr=cfg["lr"]), Averaging(cfg["nonmono"]), None
    if mode == "finetune":
        averaging.start(model, epoch=0)  # average from the first step
    if mode == "resume":
        optimizer.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
        averaging = Averaging(**ckpt["averaging"])
        averaging.average = {k: v.to(device) for k, v in averaging.average.items()}
        if ckpt["hidden"] is not None:
            hidden = map_hidden(lambda h: h.to(device), ckpt["hidden"])
        restore_rng(ckpt["rng"])
    run_dir.mkdir(parents=True, exist_ok=True)
    return corpus, model, optimizer, state, averaging, hidden, run_dir


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


def end_of_epoch(model, optimizer, cfg, state, averaging, val_loss, improved):
    """Update the schedule and NT-ASGD after an epoch's validation; returns a note for the log.

    Fine-tuning (cfg["finetune"] set) averages from the start and stops when the non-monotone
    criterion holds; plain nt-asgd starts averaging when it first holds."""
    note = ""
    if cfg["schedule"] == "plateau" and not improved:
        state.lr /= cfg["anneal"]
        set_lr(optimizer, state.lr)
    trigger = nonmonotone_trigger(averaging.history, val_loss, cfg["nonmono"])
    if cfg.get("finetune") and trigger:
        state.finished, note = True, "fine-tuning done (non-monotone criterion)"
    elif cfg["optimizer"] == "nt-asgd" and not averaging.active and trigger:
        averaging.start(model, state.epoch)
        note = "NT-ASGD: averaging starts"
    averaging.history.append(val_loss)
    return note


def fit(cfg, ckpt=None, mode="new"):
    """Train according to cfg; returns 0 when finished and 130 when stopped by Ctrl-C."""
    corpus, model, optimizer, state, averaging, hidden, run_dir = start_run(cfg, ckpt, mode)
    device = next(model.parameters()).device
    train_data = batchify(corpus.train, cfg["batch_size"], device)
    val_data = batchify(corpus.valid, cfg["eval_batch_size"], device)
    (run_dir / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    truncate_metrics(run_dir, state.epoch)
    nparams = sum(p.numel() for p in model.parameters())
    unit = "characters" if corpus.level == "char" else "words"
    print(f"{corpus.source}: {len(corpus.itos):,} {unit}, {len(corpus.train):,} train tokens | "
          f"{nparams:,} parameters | {device}, {cfg['dtype']} | run dir {run_dir}")
    if mode == "finetune":  # the model must beat its own starting point to be saved
        state.best_val_loss = evaluate(model, val_data, cfg["dtype"]).loss
        print(f"fine-tuning from val ppl {math.exp(state.best_val_loss):.2f}")

    def save(name, hidden=None):
        ckpt = make_checkpoint(model, optimizer, cfg, corpus, state, averaging, hidden, name == LAST)
        save_checkpoint(ckpt, run_dir / name)

    # The budget counts training time over all sessions of the run.
    deadline = time.time() + (cfg["max_minutes"] or math.inf) * 60 - state.seconds

    def time_up():
        return time.time() >= deadline

    with StopOnInterrupt() as stop:
        epoch = state.epoch + 1
        while epoch <= cfg["epochs"] and not state.finished and not time_up():
            t0, tokens0 = time.time(), state.train_tokens
            if state.position == 0:
                hidden = model.init_hidden(cfg["batch_size"])
            hidden = train_epoch(model, train_data, optimizer, cfg, state, averaging, hidden,
                                 lambda: stop.requested or time_up())
            train_seconds = time.time() - t0
            if stop.requested:  # mid-epoch: keep the recurrent state for an exact resume
                state.seconds += time.time() - t0
                save(LAST, hidden)
                print(f"stopped in epoch {epoch} after batch {state.batches}; resume with "
                      f"python train.py --resume {run_dir}")
                return 130
            with averaging.weights(model):
                val = evaluate(model, val_data, cfg["dtype"])
            val_loss = val.loss
            improved = val_loss < state.best_val_loss
            train_loss = state.train_loss_sum / state.train_tokens
            row = {"epoch": epoch, "train_loss": train_loss, "train_ppl": math.exp(train_loss),
                   "val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_accuracy": val.accuracy,
                   **({"train_bpc": train_loss / math.log(2), "val_bpc": val.bits}
                      if corpus.level == "char" else {}),
                   "lr": optimizer.param_groups[0]["lr"], "averaged": averaging.active,
                   "epoch_seconds": round(time.time() - t0, 2),
                   "train_tokens_per_s": round((state.train_tokens - tokens0) / train_seconds, 1)}
            partial = time_up()
            if partial:
                row["partial"] = True
            state.epoch, state.position, state.batches = epoch, 0, 0
            state.train_loss_sum, state.train_tokens = 0.0, 0
            note = end_of_epoch(model, optimizer, cfg, state, averaging, val_loss, improved)
            state.seconds += time.time() - t0
            if improved:
                state.best_val_loss = val_loss
                with averaging.weights(model):  # the weights that were just evaluated
                    save(BEST)
            save(LAST)
            append_metrics(run_dir, row)
            val_text = (f"val bpc {row['val_bpc']:.4f} | val acc {val.accuracy:.2%}" if corpus.level == "char"
                        else f"val ppl {row['val_ppl']:8.2f}")
            print(f"epoch {epoch:3d} | train loss {train_loss:.4f} | val loss {val_loss:.4f} | {val_text} | "
                  f"lr {row['lr']:.4g} | {row['epoch_seconds']:.0f}s"
                  + (" | saved best" if improved else "") + (f" | {note}" if note else "")
                  + (" | time budget reached" if partial else ""), flush=True)
            if stop.requested:
                print(f"stopped after epoch {epoch}; resume with python train.py --resume {run_dir}")
                return 130
            epoch += 1
    print(f"done: best val loss {state.best_val_loss:.4f} (ppl {math.exp(state.best_val_loss):.2f}) | "
          f"{state.seconds / 60:.1f} min | evaluate with python evaluate.py {run_dir}")
    if cfg["plot"]:
        draw_run(run_dir)
    return 0


def draw_run(run_dir):
    """The run's own curves.png; plotting trouble is a warning, since training has finished."""
    try:
        plot_runs([run_dir], run_dir / "curves.png")
        print(f"curves: {run_dir / 'curves.png'}")
    except (ImportError, PlotError) as e:
        print(f"warning: no curves.png: {e}", file=sys.stderr)


def main(argv=None):
    try:
        cfg, ckpt, mode = resolve_config(argv)
        print(json.dumps(cfg, indent=2))
        return fit(cfg, ckpt, mode)
    except (ConfigError, CheckpointError, DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
