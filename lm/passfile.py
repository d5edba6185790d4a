"""Files that let dynamic evaluation's work outlive its process: load_keyed reads back a file made
for one job (kept gradient statistics, a saved pass) and refuses one made for another; PassFile
keeps a pass as it goes, under the key of its job (pass_key)."""
import hashlib
import time
from pathlib import Path

import torch

from data import DataError
from lm import cli
from lm.checkpoint import CheckpointError, load_file, save_file, unverified_notice


def digest(tensors):
    """sha256 of the tensors' bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def load_keyed(path, fmt, key, what, advice, holds, flag, needs=(), map_location="cpu"):
    """A file that dynamic evaluation saved as {"format", "key", ...}, read for a pass with this `key`: damaged,
    or without "key" or a field of `needs`, it is a one-line CheckpointError ("cannot read <what>
    <path>: ...; <advice>"); made for another key or format, a DataError naming what differs."""
    saved, verified = load_file(path, what, advice, map_location)
    try:
        for name in needs:
            saved[name]
        differ = [k for k in key if saved["key"].get(k) != key[k]]
    except Exception as e:  # noqa: BLE001 - any file of another shape gets the same one-line error
        raise CheckpointError(f"cannot read {what} {path}: {cli.first_line(e)}; {advice}") from None
    if saved.get("format") != fmt or differ:
        raise DataError(f"{path} holds {holds} other {', '.join(differ) or 'format'}; give {flag} another path "
                        "or delete the file")
    if not verified:
        unverified_notice(path)
    return saved


PASS_FORMAT = 1  # of the files that PassFile keeps


class PassFile:
    """A dynamic-evaluation pass kept in a file so that it outlives its process: after the
    segments done so far, the adapted weights, the recurrent state, the sums, the cache's memory
    and the seconds spent. Written atomically every `every_minutes` (0: after every segment) and
    when the pass is stopped; read back at once (`saved`, None when there is none) by a later pass
    of the same job, `key` (see pass_key): a file of another job is a DataError and is left alone.
    Deleted by finish() when the pass is done. `earlier_seconds` is what earlier processes spent."""

    def __init__(self, path, every_minutes, key):
        self.path, self.every, self.key = Path(path), 60 * every_minutes, key
        self.started = self.saved_at = time.time()
        self.saved, self.earlier_seconds = self._load(), 0.0
        if self.saved:
            self.earlier_seconds = self.saved["seconds"]

    def _load(self):
        if not self.path.exists():
            return None
        return load_keyed(self.path, PASS_FORMAT, self.key, what="the saved pass",
                          advice="delete it to start the pass over", holds="a pass with", flag="--dyn-checkpoint")

    def due(self):
        return time.time() - self.saved_at >= self.every

    def save(self, state):
        seconds = self.earlier_seconds + time.time() - self.started
        save_file({"format": PASS_FORMAT, "key": self.key, "seconds": seconds, **state}, self.path)
        self.saved_at = time.time()

    def finish(self):
        self.path.unlink(missing_ok=True)


def pass_key(model, source, settings, dtype, cache, stats_source, stat_batches):
    """What identifies a dynamic-evaluation job, for PassFile: θ0, the scored text, the settings,
    and what the statistics are made from (the training text and how many segments of it)."""
    return {"weights": digest(p for _, p in sorted(model.named_parameters())), "text": digest([source]),
            "settings": repr(settings), "dtype": dtype,
            "cache": None if cache is None else repr((cache.window, cache.theta, cache.lam, cache.gaps)),
            "statistics": repr((digest([stats_source]), stat_batches))}
