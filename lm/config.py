"""train.py's configuration: defaults, the command line, and how they combine with the presets
(lm/presets.py).

A run's config is one flat dict, saved in every checkpoint and in the run's config.json. It is
resolved in layers, each overriding the one before:

    defaults < the model family's (--model awd-lstm, qrnn, transformer) < character defaults
             (--level char) < preset < flags given on the command line

The defaults are one table, lm/defaults.py's DEFAULTS, by kind of run. --resume takes the
saved config and lets only RESUMABLE flags change; --finetune takes the run's config and switches
to NT-ASGD averaging from the start.
"""
import argparse
import time
from pathlib import Path

from data import LEVELS
from lm import cli
from lm.checkpoint import BEST, LAST, load_checkpoint
from lm.defaults import (
    DEFAULT_LR,
    DEFAULTS,
    FAMILY_MODEL,
    MODEL_KEYS,
    NOT_FOR,
    base_defaults,
    default_note,
    model_defaults,
)
from lm.models import MODEL_TYPES, config_class, config_from_dict, family
from lm.optim import PROGRESS_SCHEDULES
from lm.precision import DTYPES, check_dtype, default_dtype
from lm.presets import PRESETS
from lm.recurrence import LSTM_KERNELS


class ConfigError(cli.UserError):
    """A bad combination of flags, reported as one line."""


# Flags that may change when a run is resumed; the rest would make it a different run.
RESUMABLE = {"epochs", "device", "dtype", "val_dtype", "max_batches", "max_minutes", "checkpoint_every", "dist_timeout",
             "log_interval", "plot", "lstm_kernel"}
# Flags added after runs were first saved, with the value that those older runs used.
LATER_FLAGS = {"dtype": "fp32", "val_dtype": "fp32", "level": "word", "plot": False, "lstm_kernel": "auto",
               "checkpoint_every": None, "average_start": None, "dist_timeout": 600.0, "nhead": None, "context": None}
# Flags that --finetune may not change: they define the model being fine-tuned.
MODEL_FLAGS = {"data", "level", *MODEL_KEYS}


def flag(key):
    return "--" + key.replace("_", "-")


def preset_help():
    return "; ".join(f"{name}: " + " ".join(f"{flag(k)} {v}" for k, v in preset.items())
                     for name, preset in PRESETS.items())


def add(group, key, help, **kw):
    """A flag whose default stays None on the parser (see DEFAULTS), with its defaults in the help."""
    group.add_argument(flag(key), default=None, help=help + default_note(key), **kw)


def get_parser(description=None):
    p = cli.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p.add_argument_group("data and model"))
    add_optimization_flags(p.add_argument_group("optimization"))
    add_run_flags(p.add_argument_group("run"))
    return p


def add_model_flags(g):
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="a named configuration (the original code's README commands, fast.ai's Adam "
                        "recipe, the 2-hour CPU recipes, the published fast recipe for a GPU budget); "
                        "explicit flags override its values: " + preset_help())
    add(g, "data", "hub dataset (wikitext-2, wikitext-103, ptb, tinyshakespeare) or a folder with "
                   "train.txt/valid.txt/test.txt; with --level char also one text file, cut 90/5/5")
    add(g, "level", "tokens are words (split on whitespace, <eos> per line) or characters", choices=LEVELS)
    add(g, "model", "a baseline recurrent cell, AWD-LSTM, the QRNN (AWD-LSTM's regularizers on QRNN layers, as the "
                    "original code's --model QRNN) or a decoder-only Transformer", choices=MODEL_TYPES)
    add(g, "emsize", "embedding size (awd-lstm, qrnn: also the last layer's size when tied; transformer: the "
                     "model's width)", type=int)
    add(g, "nhid", "hidden units per layer (awd-lstm, qrnn: all layers but the last; transformer: the MLP's "
                   "hidden width)", type=int)
    add(g, "nlayers", "number of recurrent layers, or Transformer blocks", type=int)
    add(g, "nhead", "transformer: attention heads, each of --emsize / --nhead units", type=int)
    add(g, "context", "transformer: its context window, the most tokens it sees at once; training windows "
                      "(--bptt) must fit in it, and evaluation slides a window of this size over the text", type=int)
    add(g, "tied", "tie the decoder weight to the embedding (baseline: needs --nhid == --emsize)",
        action=argparse.BooleanOptionalAction)
    add(g, "dropout", "baseline: dropout on the embedding, between layers and on the output; transformer: on "
                      "the embeddings, the attention weights and each residual branch", type=float)
    add(g, "dropout_embedding", "awd-lstm, qrnn: fraction of words dropped from the embedding matrix "
                                "(the paper's embedding dropout, dropoute)", type=float)
    add(g, "dropout_input", "awd-lstm, qrnn: locked dropout on the embedding output (dropouti)", type=float)
    add(g, "dropout_hidden", "awd-lstm, qrnn: locked dropout between recurrent layers (dropouth)", type=float)
    add(g, "dropout_output", "awd-lstm, qrnn: locked dropout on the last layer's output (dropout)", type=float)
    add(g, "dropout_weight", "awd-lstm: DropConnect on hidden-to-hidden weights (the paper's weight drop, wdrop); "
                             "qrnn: on each layer's whole weight, as the original code; 0 turns weight drop off",
        type=float)
    add(g, "locked_dropout", "awd-lstm, qrnn: one dropout mask per sequence, shared over time (variational); "
                             "--no-locked-dropout draws a new mask per step",
        action=argparse.BooleanOptionalAction)


def add_optimization_flags(g):
    add(g, "optimizer", "sgd (plain), nt-asgd (SGD, then averaging by the non-monotone trigger), adam, adamw",
        choices=tuple(DEFAULT_LR))
    add(g, "lr", "initial learning rate; at word level 20 for sgd, 30 for nt-asgd, 0.001 for adam/adamw; "
                 "--finetune keeps the run's SGD lr", type=float)
    add(g, "schedule", "lr schedule: plateau (divide by --anneal when validation does not improve), "
                       "constant, cosine, onecycle or onecycle-flat (the fast AWD-LSTM recipe's: up from lr/10 "
                       "over --warmup, flat to half-way, down to lr/10, a cosine to 0 over the last --warmup); "
                       "the last three run over --epochs, or over --max-minutes when that ends first "
                       "(default: constant for nt-asgd, else plateau)",
        choices=("plateau", "constant", *PROGRESS_SCHEDULES))
    add(g, "warmup", "cosine/onecycle: fraction of training spent warming the lr up", type=float)
    add(g, "anneal", "plateau: divide the lr by this when validation loss does not improve", type=float)
    add(g, "nonmono", "nt-asgd: the non-monotone window (epochs) of the averaging trigger", type=int)
    add(g, "average_start", "average the weights after every step from this fraction of the planned training "
                            "on (of --epochs, or of --max-minutes when that ends first), with any optimizer; "
                            "replaces nt-asgd's trigger", type=float)
    add(g, "adam_betas", "adam/adamw: beta1 beta2", type=float, nargs=2, metavar=("B1", "B2"))
    add(g, "wdecay", "weight decay", type=float)
    add(g, "clip", "clip the gradient norm to this (0: no clipping)", type=float)
    add(g, "alpha", "AR: weight of the mean squared dropped last-layer output (0: off)", type=float)
    add(g, "beta", "TAR: weight of the mean squared step-to-step change of the last-layer output (0: off)",
        type=float)
    add(g, "epochs", "last epoch to train (on --resume, may be raised to train longer)", type=int)
    add(g, "batch_size", "training batch size (parallel token streams)", type=int)
    add(g, "eval_batch_size", "batch size of the validation pass each epoch (not for transformer, which "
                              "validates by a sliding window)", type=int)
    add(g, "bptt", "tokens per truncated-BPTT window (the mean one with --variable-bptt)", type=int)
    add(g, "variable_bptt", "draw each window's length around --bptt and scale the lr by length/bptt",
        action=argparse.BooleanOptionalAction)


def add_run_flags(g):
    add(g, "seed", "random seed", type=int)
    add(g, "device", f"{cli.DEVICES} (default: cuda if available, else cpu)")
    add(g, "dtype", "training precision: fp32, or bf16 or fp16 autocast with fp32 master weights; fp16 "
                    "scales the loss (torch.amp.GradScaler) and skips steps whose gradients overflow. "
                    "Default: bf16 where the device runs it natively (CUDA compute capability 8.0+, a CPU "
                    "with AVX512-BF16/AMX), fp16 on older CUDA GPUs (T4, V100), else fp32", choices=DTYPES)
    add(g, "val_dtype", "precision of the validation pass that picks model.pt, triggers NT-ASGD and "
                        "stops fine-tuning; fp32 agrees with evaluate.py's default", choices=DTYPES)
    add(g, "lstm_kernel", "how AWD-LSTM's layers run: fused (torch.lstm: oneDNN, cuDNN), own (our "
                          "recurrence with a hand-written backward), or auto: own for bf16 training on "
                          "CPU where its time steps are large enough to gain, fused elsewhere",
        choices=LSTM_KERNELS)
    add(g, "dist_timeout", "under torchrun: seconds a process waits for the others, at the rendezvous and at "
                           "every collective, before it gives up with an error", type=float)
    add(g, "save", "run directory, made with its parents where missing (default: checkpoints/<data>-<model>-<time>; "
                   "<run>-finetune with --finetune)")
    g.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR from its last.pt; its saved config is used, and only "
                        f"{', '.join(flag(k) for k in sorted(RESUMABLE))} may be changed")
    g.add_argument("--finetune", metavar="DIR", default=None,
                   help="AWD-LSTM's fine-tuning stage: start from DIR's best weights (model.pt) and "
                        "train with averaging from the first step until the non-monotone criterion holds")
    add(g, "max_batches", "train at most this many batches per epoch (for smoke runs)", type=int)
    add(g, "max_minutes", "stop after this much training time: the epoch under way is cut short, "
                          "validated and saved", type=float)
    add(g, "checkpoint_every", "also write last.pt every this many minutes in the middle of an epoch, with "
                               "everything an exact resume needs, so that a killed run loses at most that much",
        type=float)
    add(g, "log_interval", "batches between progress-bar updates (each costs a host sync)", type=int)
    add(g, "plot", "when the run ends, draw its loss and accuracy curves into <run>/curves.png",
        action=argparse.BooleanOptionalAction)


def fill_defaults(given):
    """Defaults < AWD-LSTM defaults (for awd-lstm) < character defaults (for --level char) <
    preset < explicit flags."""
    preset = PRESETS[given["preset"]] if given.get("preset") else {}
    model = given.get("model") or preset.get("model") or DEFAULTS["plain"]["model"]
    cfg = {**base_defaults(family(model), given.get("level") == "char"), **preset,
           **{k: v for k, v in given.items() if k != "preset"}, "preset": given.get("preset")}
    if cfg["lr"] is None:
        cfg["lr"] = DEFAULT_LR[cfg["optimizer"]]
    if cfg["schedule"] is None:
        cfg["schedule"] = "constant" if cfg["optimizer"] == "nt-asgd" else "plateau"
    if cfg["device"] is None:
        cfg["device"] = cli.default_device()
    cli.check_device(cfg["device"])
    if cfg["dtype"] is None:
        cfg["dtype"] = default_dtype(cfg["device"])
    cfg["finetune"] = None
    return cfg


def check_config(cfg, given):
    """One-line errors for values and combinations that cannot run; also run on --resume and
    --finetune, where `given` holds only the flags of this command line."""
    if cfg.get("preset") and cfg["model"] != PRESETS[cfg["preset"]]["model"]:
        raise ConfigError(f"--preset {cfg['preset']} is for --model {PRESETS[cfg['preset']]['model']}")
    check_family_flags(cfg, given)
    for key in ("emsize", "nhid", "nlayers", "nhead", "context", "epochs", "batch_size", "eval_batch_size", "bptt",
                "log_interval", "nonmono"):
        if cfg.get(key) is not None and cfg[key] < 1:
            raise ConfigError(f"{flag(key)} must be at least 1, got {cfg[key]}")
    check_context(cfg)
    for key in MODEL_KEYS:
        if key.startswith("dropout") and isinstance(cfg.get(key), float) and not 0 <= cfg[key] < 1:
            raise ConfigError(f"{flag(key)} must be in [0, 1), got {cfg[key]}")
    if not cfg["lr"] > 0:
        raise ConfigError(f"--lr must be positive, got {cfg['lr']}")
    for key in ("clip", "wdecay", "alpha", "beta"):
        if not cfg[key] >= 0:
            raise ConfigError(f"{flag(key)} must not be negative, got {cfg[key]}")
    for key in ("max_batches", "max_minutes", "checkpoint_every"):
        if cfg[key] is not None and not cfg[key] > 0:
            raise ConfigError(f"{flag(key)} must be positive, got {cfg[key]} (leave it out for no limit)")
    if cfg["lstm_kernel"] != "auto" and cfg["model"] != "awd-lstm":
        raise ConfigError(f"--lstm-kernel applies to --model awd-lstm only, not {cfg['model']}"
                          + (" (the baseline runs PyTorch's own nn.LSTM/GRU/RNN)" if cfg["model"] in MODEL_TYPES[:4]
                             else ""))
    if cfg["device"]:  # None: not resolved yet (the plain defaults)
        cli.check_device(cfg["device"])
    for key in ("dtype", "val_dtype"):
        if cfg[key]:
            check_dtype(cfg["device"], cfg[key], flag=flag(key))
    most = 0.5 if cfg["schedule"] == "onecycle-flat" else 1  # its warm-up and cool-down must fit in one run
    if not 0 <= cfg["warmup"] < most:
        raise ConfigError(f"--warmup must be in [0, {most}) for --schedule {cfg['schedule']}, got {cfg['warmup']}")
    if cfg["average_start"] is not None and not 0 <= cfg["average_start"] < 1:
        raise ConfigError(f"--average-start must be in [0, 1), got {cfg['average_start']}")
    if cfg.get("finetune") and "average_start" in given:
        raise ConfigError("--average-start does not apply to --finetune, which averages from its first step")


def check_family_flags(cfg, given):
    """Refuse a flag given for a model family that has no use for it."""
    name = family(cfg["model"])
    wrong = [k for k in given if k in MODEL_KEYS and k not in FAMILY_MODEL[name] or k in NOT_FOR.get(name, {})]
    if not wrong:
        return
    hint = ""
    if wrong[0] == "dropout" and name in ("awd-lstm", "qrnn"):
        hint = "; use --dropout-input/-hidden/-output"
    elif wrong[0] in NOT_FOR.get(name, {}):
        hint = f": {NOT_FOR[name][wrong[0]]}"
    elif wrong[0].startswith("dropout_") and "dropout" in FAMILY_MODEL[name]:
        hint = "; its one rate is --dropout"
    raise ConfigError(f"{flag(wrong[0])} does not apply to --model {cfg['model']}{hint}")


def check_context(cfg):
    """A Transformer's training windows must fit in its context window: --bptt tokens, or up to
    --bptt + 20 with --variable-bptt (optim.sample_seq_len's cap)."""
    if family(cfg["model"]) != "transformer":
        return
    bptt, context = cfg["bptt"], cfg["context"]
    if cfg["variable_bptt"] and bptt + 20 > context:
        raise ConfigError(f"--bptt {bptt} with --variable-bptt draws windows of up to {bptt + 20} tokens, more than "
                          f"the Transformer's --context {context}: lower --bptt, raise --context or drop "
                          "--variable-bptt")
    if bptt > context:
        raise ConfigError(f"--bptt {bptt} exceeds the Transformer's --context {context}: lower --bptt or raise "
                          "--context")


def model_config(cfg, vocab_size, saved=None):
    """The model's config dataclass: a checkpoint's `saved` model config where it starts from one,
    else the run config's model part. The families' dataclasses refuse what cannot be built."""
    cls = config_class(cfg["model"])
    try:
        if saved is not None:
            return config_from_dict(saved)
        return cls(vocab_size=vocab_size, **{k: cfg[k] for k in model_defaults(cls)})
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resume_config(given, saved, run):
    """The saved config of the run being resumed, with the RESUMABLE flags of this command line."""
    fixed = sorted(k for k, v in given.items() if k not in RESUMABLE and v != saved.get(k))
    if fixed:
        raise ConfigError(f"{flag(fixed[0])} cannot change on --resume (the run used "
                          f"{saved.get(fixed[0])!r}); start a new run with --save instead")
    cfg = {**LATER_FLAGS, **saved, **given, "save": str(run)}
    check_config(cfg, given)
    return cfg


def finetune_config(given, saved, run):
    """Fine-tuning's config: the run's, with NT-ASGD averaging from the first step. The lr is
    the run's when it trained with SGD (the original code's finetune.py takes the same --lr as
    the main run), else NT-ASGD's default."""
    if family(saved["model"]) == "transformer":
        raise ConfigError("--finetune is AWD-LSTM's second stage, SGD with averaging; it does not apply to a "
                          "Transformer: train it longer with --resume --epochs")
    fixed = sorted(k for k in given if k in MODEL_FLAGS | {"preset"})
    if fixed:
        raise ConfigError(f"{flag(fixed[0])} cannot change with --finetune: the model comes from {run}")
    lr = saved["lr"] if saved["optimizer"] in ("sgd", "nt-asgd") else DEFAULT_LR["nt-asgd"]
    cfg = {**LATER_FLAGS, **saved, "optimizer": "nt-asgd", "schedule": "constant", "lr": lr, "average_start": None,
           "save": str(Path(run)) + "-finetune", **given, "finetune": str(run)}
    check_config(cfg, given)
    return cfg


def new_config(given):
    """A new run's config from its explicit flags."""
    cfg = fill_defaults(given)
    check_config(cfg, given)
    if cfg["save"] is None:
        name = Path(cfg["data"]).stem or "data"
        level = "-char" if cfg["level"] == "char" else ""
        cfg["save"] = f"checkpoints/{name}{level}-{cfg['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg


def resolve_config(argv=None, description=None):
    """Parse argv into (config dict, checkpoint to start from or None, mode), mode being "new",
    "resume" (from the run's last.pt) or "finetune" (from its model.pt)."""
    given = {k: v for k, v in vars(get_parser(description).parse_args(argv)).items() if v is not None}
    resume, finetune = given.pop("resume", None), given.pop("finetune", None)
    if resume and finetune:
        raise ConfigError("--resume and --finetune exclude each other (a fine-tuning run is "
                          "resumed with --resume like any run)")
    for flag_name, run in (("--resume", resume), ("--finetune", finetune)):
        if run and Path(run).is_file():
            raise ConfigError(f"{flag_name} takes a run directory, and {run} is a file; pass its folder, "
                              f"{Path(run).parent}")
    if resume:
        ckpt = load_checkpoint(resume, LAST)
        return resume_config(given, ckpt["train_config"], resume), ckpt, "resume"
    if finetune:
        ckpt = load_checkpoint(finetune, BEST)
        return finetune_config(given, ckpt["train_config"], finetune), ckpt, "finetune"
    return new_config(given), None, "new"
