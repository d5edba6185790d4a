"""One writer per run directory: the train.py process that writes a run holds an fcntl lock on
its train.lock file (checkpoint.LOCK), which holds the holder's pid. A second train.py into the
same directory is refused in one line that names that pid. The kernel releases the lock when its
process ends, however it ends (an error, SIGKILL, a crash), so a lock left by a dead process is
simply free and the next train.py takes it over. evaluate.py and generate.py read without it.

Under torchrun only rank 0 writes, so only rank 0 locks (`enabled`).
"""
import fcntl
import os
from pathlib import Path

from lm.checkpoint import LOCK, CheckpointError


class RunLock:
    """with RunLock(run_dir) as lock: ... check() early, acquire() once the checks passed.

    check() takes the lock when its file exists already, changing nothing, so that a refusal
    comes before any write; acquire() then creates the file if needed, takes the lock if check()
    could not, and writes this process's pid into it. Leaving the with block releases it (the
    file stays: deleting it would let two processes lock two different files)."""

    def __init__(self, run_dir, enabled=True):
        self.path, self.enabled, self.fd = Path(run_dir) / LOCK, enabled, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def check(self):
        if self.enabled and self.fd is None and self.path.is_file():
            self._take(os.O_RDWR)

    def acquire(self):
        if not self.enabled:
            return
        if self.fd is None:
            self._take(os.O_RDWR | os.O_CREAT)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def _take(self, flags):
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise CheckpointError(f"cannot open the lock file {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(f"{self.path.parent} is being written by another train.py process (pid {holder}, "
                                  f"which holds {self.path}); wait for it to end or stop it, or choose "
                                  "another --save") from None
        self.fd = fd
