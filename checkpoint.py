"""Run directories and checkpoints, shared by train.py, evaluate.py and generate.py.

A run directory holds
    model.pt       the best checkpoint so far (lowest validation loss); evaluate/generate use it
    last.pt        the latest state, at an epoch boundary or where Ctrl-C stopped; --resume uses it
    metrics.jsonl  one JSON line per finished epoch
    config.json    the resolved training config, for people and plot scripts

A checkpoint is a dict of state_dicts, tensors and plain Python data (no pickled objects), so it
loads with torch.load(weights_only=True). It is written to a temporary file and renamed over the
old one, so a crash during a save leaves the previous checkpoint intact.
"""
import os
import pickle
from pathlib import Path

import torch

from model import build_model, config_from_dict

BEST = "model.pt"
LAST = "last.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


class CheckpointError(Exception):
    """A run directory or checkpoint that cannot be used, reported as one line."""


def save_checkpoint(ckpt, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
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
        return torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None


def load_model(run, device="cpu", name=BEST):
    """Rebuild the model from a checkpoint alone: its config, then its weights."""
    ckpt = load_checkpoint(run, name, map_location=device)
    model = build_model(config_from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt
