"""Named points where the fault-matrix tests kill the process outright, to check that a run
survives SIGKILL anywhere (tests/test_faults.py, and tests/test_dyneval.py for "adapting").

    LM_FAULT=POINT python train.py ...       # SIGKILL at the first arrival at POINT
    LM_FAULT=POINT@N python train.py ...     # at the N-th arrival

With LM_FAULT unset, which is always the case outside those tests, `point` is a function that
returns at once. The points:

    batch          after a training step, before any periodic checkpoint it may trigger
    writing        a write call into a file that checkpoint.py is writing (a torn file)
    saved-tmp      a checkpoint's temporary file is written, the rename has not happened
    validating     inside an evaluation pass (train.py's validation, evaluate.py)
    validated      an epoch is validated, the averaging and lr updates have not happened
    averaging      NT-ASGD's trigger has just started averaging, nothing is saved yet
    best-saved     model.pt is written, the epoch's metrics.jsonl line and last.pt not yet
    logged         the metrics.jsonl line is written, last.pt not yet
    sampling       generate.py, between two sampled tokens
    adapting       dynamic evaluation, after a segment's update (and its save, when one is due)

The same tests also make train.py's periodic checkpoints come after a fixed number of batches
instead of after --checkpoint-every's minutes, so that every point falls at the same place of
the run on any machine, however fast or loaded:

    LM_CHECKPOINT_BATCHES=N python train.py ...   # also write last.pt after batches N, 2N, ... of each epoch

Unset, `checkpoint_due` is a function that returns False at once.
"""
import os
import signal


def make_point(spec):
    """The `point(name)` function for an LM_FAULT value ("POINT" or "POINT@N"; None: no faults)."""
    if not spec:
        return lambda name: None
    target, _, nth = spec.partition("@")
    left = [int(nth or 1)]

    def point(name):
        if name == target:
            left[0] -= 1
            if left[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    return point


def make_batch_trigger(spec):
    """checkpoint_due(batches) for an LM_CHECKPOINT_BATCHES value: whether the epoch's batch
    number `batches` (counted from 1) is a multiple of it (None: never)."""
    if not spec:
        return lambda batches: False
    every = int(spec)
    return lambda batches: batches % every == 0


class _Writer:
    """A file whose every write() passes the "writing" point first."""

    def __init__(self, f, point):
        self.f, self.point = f, point

    def write(self, data):
        self.point("writing")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def make_writer(spec, point):
    """writer(f): f itself without faults, else f with the "writing" point in each write()."""
    if not spec:
        return lambda f: f
    return lambda f: _Writer(f, point)


point = make_point(os.environ.get("LM_FAULT"))
writer = make_writer(os.environ.get("LM_FAULT"), point)
checkpoint_due = make_batch_trigger(os.environ.get("LM_CHECKPOINT_BATCHES"))
