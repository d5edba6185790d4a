"""Run directories and checkpoints, shared by train.py, evaluate.py and generate.py.

A run directory holds
    model.pt       the best checkpoint so far (lowest validation loss); evaluate/generate use it
    last.pt        the latest state, at an epoch boundary or where Ctrl-C stopped; --resume uses it
    metrics.jsonl  one JSON line per finished epoch
    config.json    the resolved training config, for people and plot scripts

    train.lock     held (fcntl) by the one train.py process that writes the run; holds its pid

A checkpoint (build_checkpoint) is a dict of state_dicts, tensors and plain Python data (no
pickled objects), so it loads with torch.load(weights_only=True). It is written to a temporary
file and renamed over the old one, so a crash during a save leaves the previous checkpoint
intact. The file is torch.save's zip archive with the SHA-256 digest of its bytes in the zip's
comment field (save_file), which zip readers, torch.load included, skip; every load checks it
before unpickling anything (load_file), so a damaged file is refused, never half-read. Files
written before the digest existed have no comment and load with a notice. This module is the
only one that knows these names and formats.
"""
import hashlib
import json
import mmap
import os
import struct
import sys
import warnings
from pathlib import Path

import torch

from lm import cli, faults
from lm.models import build_model, config_from_dict

# The layout of a checkpoint dict; raised when a change would break reading older ones.
# Checkpoints saved before the field existed are format 1.
FORMAT = 1
BEST = "model.pt"
LAST = "last.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
LOCK = "train.lock"
END_RECORD = b"PK\x05\x06"  # the zip's end-of-central-directory record: 22 bytes, then the comment
DIGEST_TAG = b"lm-sha256:"
COMMENT_SIZE = len(DIGEST_TAG) + 64  # the tag and the hex digest


class CheckpointError(cli.UserError):
    """A run directory or checkpoint that cannot be used, reported as one line."""


def save_checkpoint(ckpt, path):
    """Write ckpt to path atomically, with its digest; a failed write (full disk, read-only
    folder) is a CheckpointError and leaves the previous file as it was."""
    save_file(ckpt, path, "saved-tmp")


class _Hashing:
    """A file whose writes also go into a SHA-256 digest; keeps the last 22 bytes written."""

    def __init__(self, f):
        self.f, self.sha, self.tail = f, hashlib.sha256(), b""

    def write(self, data):
        self.sha.update(data)
        self.tail = (self.tail + bytes(data[-22:]))[-22:]
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def save_file(obj, path, fault=None):
    """torch.save(obj) to path atomically, hashed as it is written; the digest of those bytes
    then goes into the zip's comment (the last two bytes, the comment's length, become its size)."""
    def write(f):
        hashing = _Hashing(f)
        torch.save(obj, hashing)
        if hashing.tail[:4] != END_RECORD or hashing.tail[-2:] != b"\0\0":
            raise RuntimeError("torch.save wrote no zip end record without a comment; update save_file")
        f.seek(-2, os.SEEK_END)
        f.write(struct.pack("<H", COMMENT_SIZE) + DIGEST_TAG + hashing.sha.hexdigest().encode())

    write_atomically(path, write, fault)


class Damaged(Exception):
    """Why a file's bytes are not the ones that save_file wrote."""


def verify(view):
    """Check the digest of a file's bytes (a memoryview); False for a file written without one."""
    size = len(view)
    if size >= 22 and view[size - 22:size - 18] == END_RECORD and view[size - 2:] == b"\0\0":
        return False  # torch.save's own archive, from before the digest
    end = size - 22 - COMMENT_SIZE  # where the end record must start
    if (end < 0 or view[end:end + 4] != END_RECORD or view[end + 20:end + 22] != struct.pack("<H", COMMENT_SIZE)
            or view[end + 22:end + 22 + len(DIGEST_TAG)] != DIGEST_TAG):
        raise Damaged("it is truncated or not a file written by this code (no zip end record with a digest)")
    sha = hashlib.sha256(view[:end + 20])
    sha.update(b"\0\0")  # the comment's length as torch.save wrote it
    if sha.hexdigest().encode() != view[end + 22 + len(DIGEST_TAG):]:
        raise Damaged("it is damaged: its bytes do not match the SHA-256 digest written with them")
    return True


def load_file(path, what, advice, map_location="cpu"):
    """(torch.load(path, weights_only=True), whether its digest was checked). The file is mapped
    into memory once: hashed there, then unpickled from there. Any failure, whatever torch raises
    on damaged bytes, is one CheckpointError: "cannot read <what> <path>: <why>; <advice>"."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise Damaged("it is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                with memoryview(mapped) as view:
                    verified = verify(view)
                with warnings.catch_warnings():  # e.g. about a foreign pickle's protocol: the error says it all
                    warnings.simplefilter("ignore")
                    return torch.load(mapped, map_location=map_location, weights_only=True), verified
    except Damaged as e:
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes torch raise (torch 2.11: KeyError)
        reason = cli.first_line(e)
    raise CheckpointError(f"cannot read {what} {path}: {reason}; {advice}")


def unverified_notice(path):
    print(f"note: {path} was written before files carried a SHA-256 digest; it is read unchecked "
          "(files written from now on carry one)", file=sys.stderr)


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


def what_to_do(path):
    """The advice of a refusal to read checkpoint `path`: the run's other checkpoint."""
    path = Path(path)
    if path.name == BEST:
        return (f"restore it from a backup, or evaluate and sample from the run's latest weights instead: "
                f"pass {path.with_name(LAST)}")
    if path.name == LAST:
        return (f"restore it from a backup; the run's best weights, {path.with_name(BEST)}, are a separate "
                "file that evaluate.py and generate.py read and train.py --finetune starts from")
    return "restore it from a backup, or use another checkpoint of the run"


def load_checkpoint(run, name=BEST, map_location="cpu"):
    path = checkpoint_path(run, name)
    ckpt, verified = load_file(path, "checkpoint", what_to_do(path), map_location)
    if not isinstance(ckpt, dict) or not {"model", "model_config", "train_config"} <= ckpt.keys():
        raise CheckpointError(f"{path} is not a checkpoint written by train.py")
    if not isinstance(ckpt.get("format", 1), int) or ckpt.get("format", 1) > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format']}, newer than this code reads "
                              f"({FORMAT}); update this repository to read it")
    if not verified:
        unverified_notice(path)
    return ckpt


def load_model(run, device="cpu", name=BEST):
    """Rebuild the model from a checkpoint alone: its config, then its weights."""
    ckpt = load_checkpoint(run, name, map_location=device)
    try:
        model = build_model(config_from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the model in {checkpoint_path(run, name)} does not match its own config: "
                              f"{cli.first_line(e)}") from None
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


def metric_lines(data):
    """(line number, raw line, row dict or None where unreadable) of each non-empty line of a
    metrics.jsonl file's bytes; a line without its newline (torn by a kill during an append) is kept."""
    out = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode())
            row = row if isinstance(row, dict) and type(row.get("epoch")) is int else None
        except (ValueError, RecursionError):  # JSON or UTF-8, or absurdly nested
            row = None
        out.append((number, raw, row))
    return out


def read_metrics(run_dir):
    """The rows of metrics.jsonl, one dict per finished epoch (empty if there are none yet). An
    unreadable last line, torn by a kill in the middle of an append, is left out; an unreadable
    line before it is a CheckpointError that names it."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    lines = metric_lines(path.read_bytes())
    for number, _, row in lines[:-1]:
        if row is None:
            raise CheckpointError(f"line {number} of {path} is unreadable; mend or delete it")
    return [row for _, _, row in lines if row is not None]


def kept_metrics(run_dir, epochs_done):
    """(text, note): the text metrics.jsonl must have for a run resumed from a checkpoint after
    `epochs_done` epochs (None when it has it already), and a notice to print or None. Lines of
    later epochs (e.g. from a crash between log and save) are dropped, and so is an unreadable
    last line (torn by a kill during an append). An unreadable line before it, of an epoch that the
    checkpoint has recorded, is a CheckpointError naming the line. This only reads, so that
    nothing is written before a refusal."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return None, None
    data = path.read_bytes()
    lines, kept, epoch, note = metric_lines(data), [], 0, None
    for i, (number, raw, row) in enumerate(lines):
        epoch = row["epoch"] if row else epoch + 1  # one line per epoch, in order
        if row is None and epoch <= epochs_done:
            if i < len(lines) - 1:
                raise CheckpointError(f"line {number} of {path} is unreadable and holds epoch {epoch}, which the "
                                      f"checkpoint has recorded; mend or delete that line, then resume again")
            note = f"note: the last line of {path} (epoch {epoch}) is torn; it is dropped from the log"
        if row is not None and epoch <= epochs_done:
            kept.append(raw + b"\n")
    text = b"".join(kept)
    return (None if text == data else text), note


def append_metrics(run_dir, row):
    try:
        with open(Path(run_dir) / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise CheckpointError(f"cannot write {Path(run_dir) / METRICS}: {e.strerror or e}") from None


def write_metrics(run_dir, text):
    """Replace metrics.jsonl with text (from kept_metrics), atomically."""
    write_atomically(Path(run_dir) / METRICS, lambda f: f.write(text))


def write_config(run_dir, cfg):
    text = json.dumps(cfg, indent=2) + "\n"
    write_atomically(Path(run_dir) / CONFIG, lambda f: f.write(text.encode()))
