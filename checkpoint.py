"""Run directories and checkpoints, shared by train.py, evaluate.py and generate.py.

A run directory holds
    model.pt       the best checkpoint so far (lowest validation loss); evaluate/generate use it
    last.pt        the latest state, at an epoch boundary or where Ctrl-C stopped; --resume uses it
    metrics.jsonl  one JSON line per finished epoch
    config.json    the resolved training config, for people and plot scripts

A checkpoint (build_checkpoint) is a dict of state_dicts, tensors and plain Python data (no
pickled objects), so it loads with torch.load(weights_only=True). It is written to a temporary
file and renamed over the old one, so a crash during a save leaves the previous checkpoint
intact. This module is the only one that knows these names and formats.
"""
import json
import os
import pickle
import warnings
from pathlib import Path

import torch

import cli
import faults
from model import build_model, config_from_dict

# The layout of a checkpoint dict; raised when a change would break reading older ones.
# Checkpoints saved before the field existed are format 1.
FORMAT = 1
BEST = "model.pt"
LAST = "last.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


class CheckpointError(Exception):
    """A run directory or checkpoint that cannot be used, reported as one line."""


def save_checkpoint(ckpt, path):
    """Write ckpt to path atomically; a failed write (full disk, read-only folder) is a
    CheckpointError and leaves the previous file as it was."""
    write_atomically(path, lambda f: torch.save(ckpt, f), "saved-tmp")


def write_atomically(path, write, fault=None):
    """write(f) into a temporary file beside path, flushed to disk, then renamed over path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(faults.writer(f))
            f.flush()
            os.fsync(f.fileno())
        if fault:
            faults.point(fault)
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; the previous {path.name} "
                              "is untouched") from None
    finally:
        tmp.unlink(missing_ok=True)


def checkpoint_path(run, name=BEST):
    """A run directory (or a checkpoint file) -> the checkpoint file to read."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise CheckpointError(f"no run directory or checkpoint at {run}")
    path = run / name
    if not path.is_file():
        raise CheckpointError(f"{run} has no {name}: is it a run directory made by train.py?")
    return path


def load_checkpoint(run, name=BEST, map_location="cpu"):
    path = checkpoint_path(run, name)
    try:
        with warnings.catch_warnings():  # e.g. about a foreign pickle's protocol: the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        reason = cli.first_line(e)
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(ckpt, dict) or not {"model", "model_config", "train_config"} <= ckpt.keys():
        raise CheckpointError(f"{path} is not a checkpoint written by train.py")
    if ckpt.get("format", 1) > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format']}, newer than this code reads "
                              f"({FORMAT}); update this repository to read it")
    return ckpt


def load_model(run, device="cpu", name=BEST):
    """Rebuild the model from a checkpoint alone: its config, then its weights."""
    ckpt = load_checkpoint(run, name, map_location=device)
    model = build_model(config_from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


def has_run(run_dir):
    """Whether run_dir holds a run that --resume can continue."""
    return (Path(run_dir) / LAST).is_file()


def build_checkpoint(model, optimizer, cfg, corpus, state, averaging, hidden=None, rng=None, scaler=None):
    """Everything --resume needs, as plain data. state and averaging are plain dicts (the
    training state and the NT-ASGD state); hidden is the recurrent state that the next batch
    continues from (mid-epoch only); rng holds the random generators' states; scaler is fp16's
    loss-scaler state (None without fp16; checkpoints saved before fp16 have no such key)."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "model_config": model.cfg.to_dict(),
        "optimizer": optimizer.state_dict(),
        "train_config": cfg,
        "state": state,
        "averaging": averaging,
        "vocab": corpus.itos,
        "level": corpus.level,
        "data": corpus.source,
        "data_fingerprint": corpus.fingerprint,
        "hidden": hidden,
        "rng": rng,
        "scaler": scaler,
    }


def check_vocab(corpus, ckpt):
    if corpus.itos != ckpt["vocab"]:
        raise CheckpointError(
            f"the data at {corpus.source} has a different vocabulary ({len(corpus.itos)} tokens) "
            f"from the checkpoint's ({len(ckpt['vocab'])} tokens); pass the --data it was trained on")


def checkpoint_level(ckpt):
    """"word" or "char"; runs saved before character-level support are word-level."""
    return ckpt.get("level", "word")


def read_metrics(run_dir):
    """The rows of metrics.jsonl, one dict per finished epoch (empty if there are none yet). A
    last line without its newline, torn by a kill in the middle of an append, is left out."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1]  # an unterminated last piece is torn
    return [json.loads(line) for line in lines if line]


def append_metrics(run_dir, row):
    try:
        with open(Path(run_dir) / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise CheckpointError(f"cannot write {Path(run_dir) / METRICS}: {e.strerror or e}") from None


def truncate_metrics(run_dir, epochs_done):
    """Drop log lines of epochs after the checkpoint, e.g. from a crash between log and save."""
    path = Path(run_dir) / METRICS
    if path.exists():
        rows = [r for r in read_metrics(run_dir) if r["epoch"] <= epochs_done]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        write_atomically(path, lambda f: f.write(text.encode()))


def write_config(run_dir, cfg):
    text = json.dumps(cfg, indent=2) + "\n"
    write_atomically(Path(run_dir) / CONFIG, lambda f: f.write(text.encode()))
