"""train.py's defaults: one table, DEFAULTS, of each kind of run's values (the plain run, each
model family's, character level's), in layers that lm/config.py resolves under the presets and the
flags given. The models' own defaults are written once, in the families' config dataclasses
(lm/models.py), and read from there."""
from dataclasses import fields

from lm.models import FAMILIES

# Model config fields without a flag: the vocabulary comes from the data, and the QRNN's first-layer
# convolution width stays the original code's 2.
NO_FLAG = ("vocab_size", "window")


def model_defaults(cls):
    """Field -> default of a model config dataclass, for the fields that have a flag."""
    return {f.name: f.default for f in fields(cls) if f.name not in NO_FLAG}


FAMILY_MODEL = {name: model_defaults(cls) for name, (cls, _) in FAMILIES.items()}
MODEL_KEYS = tuple(dict.fromkeys(k for keys in FAMILY_MODEL.values() for k in keys))  # every model flag
# Flags of no model key that a family still refuses, with why.
NOT_FOR = {"transformer": {"eval_batch_size": "it validates by a sliding window over the whole split"}}


def model_layer(name):
    """A family's model defaults, with every other family's model flags unset."""
    return {**dict.fromkeys(MODEL_KEYS), **FAMILY_MODEL[name]}


# The original AWD-LSTM code's training defaults, which it runs for its LSTM and its QRNN alike.
AWD_TRAINING = {"optimizer": "nt-asgd", "wdecay": 1.2e-6, "alpha": 2.0, "beta": 1.0, "batch_size": 80, "bptt": 70,
                "variable_bptt": True, "epochs": 750}
# AWD-LSTM keeps its locked dropout, weight drop and AR/TAR at milder rates, near Merity et al.
# 2018's character-level PTB settings (dropouti 0.1, dropouth 0.25, dropout 0.1, dropoute 0), with
# a weight drop of 0.3 for a 2x512 model that trains for minutes rather than days; the QRNN the same.
CHAR_AWD = {"dropout": None, "dropout_embedding": 0.0, "dropout_input": 0.1, "dropout_hidden": 0.25,
            "dropout_output": 0.1, "dropout_weight": 0.3, "variable_bptt": True}
# Each kind of run's defaults, in layers over the plain ones (base_defaults). They live here rather
# than in the parser, so that explicit flags can be told apart: those override presets and, on
# --resume, the saved config.
DEFAULTS = {
    "plain": {
        **model_layer("baseline"),
        "data": "wikitext-2", "level": "word",
        "optimizer": "sgd", "lr": None, "schedule": None, "warmup": 0.0, "anneal": 4.0, "nonmono": 5,
        "average_start": None, "adam_betas": [0.9, 0.999], "wdecay": 0.0, "clip": 0.25, "alpha": 0.0, "beta": 0.0,
        "epochs": 40, "batch_size": 20, "eval_batch_size": 10, "bptt": 35, "variable_bptt": False,
        "seed": 1111, "device": None, "dtype": None, "val_dtype": "fp32", "lstm_kernel": "auto",
        "dist_timeout": 600.0, "save": None, "max_batches": None, "max_minutes": None, "checkpoint_every": None,
        "log_interval": 200, "plot": False,
    },
    # AWD-LSTM's training defaults: the original code's.
    "awd-lstm": {**model_layer("awd-lstm"), **AWD_TRAINING},
    "qrnn": {**model_layer("qrnn"), **AWD_TRAINING},
    # The Transformer: pytorch/examples' AdamW command (lr 1e-3, torch's weight decay 0.01, clip
    # 0.25, batch 20, plateau annealing by 4), with training windows as long as the context window
    # (pytorch/examples' bptt 35 is its context) and no variable lengths. No validation batch size:
    # it validates by a sliding window over the whole split.
    "transformer": {**model_layer("transformer"), "optimizer": "adamw", "wdecay": 0.01, "bptt": 128,
                    "eval_batch_size": None},
    # Characters are few (65 in Tiny Shakespeare) and each carries little information, so: Adam at
    # lr 2e-3 (as char-rnn) rather than SGD at lr 20, 100-character BPTT windows, a looser clip, and
    # none of the word-level regularizers that act on a whole token type (embedding dropout would
    # delete every "e" of a batch; tying a 65-row decoder saves nothing).
    "char": {
        "data": "tinyshakespeare", "emsize": 128, "nhid": 512, "nlayers": 2, "dropout": 0.2,
        "optimizer": "adam", "lr": 2e-3, "clip": 1.0, "batch_size": 64, "bptt": 100, "epochs": 30, "tied": False,
    },
    "char awd-lstm": CHAR_AWD,
    "char qrnn": CHAR_AWD,
}
# The kinds of run with their own defaults, as (family or None for any, char), named as --help names them.
KINDS = {kind: (kind.removeprefix("char ") if kind != "char" else None, kind.startswith("char"))
         for kind in DEFAULTS if kind != "plain"}
DEFAULT_LR = {"sgd": 20.0, "nt-asgd": 30.0, "adam": 1e-3, "adamw": 1e-3}


def base_defaults(model_family, char):
    """The defaults of a run of a family (lm.models.family) before presets and flags: the plain
    layer of DEFAULTS, then each kind's layer that the run is of (its family's, char, both), in
    that order."""
    cfg = dict(DEFAULTS["plain"])
    for kind, (kind_family, kind_char) in KINDS.items():
        if kind_family in (None, model_family) and (char or not kind_char):
            cfg.update(DEFAULTS[kind])
    return cfg


def default_note(key):
    """' (default: ...)' for --help: the plain default, then each kind of run's default where it
    differs from a kind that it refines (char awd-lstm refines both awd-lstm and char)."""
    shown = {}  # value -> kinds that default to it
    for kind, (kind_family, char) in KINDS.items():
        kind_family = kind_family or "baseline"
        value = base_defaults(kind_family, char)[key]
        refined = [base_defaults("baseline", char)[key], base_defaults(kind_family, False)[key]]
        if value is not None and any(value != r for r in refined):
            shown.setdefault(str(value), []).append(kind)
    plain = DEFAULTS["plain"][key]
    parts = [] if plain is None else [str(plain)]
    parts += [f"{value} for {' and '.join(kinds)}" for value, kinds in shown.items()]
    return f" (default: {', '.join(parts)})" if parts else ""
