"""train.py with several processes under torchrun: who this process is, the process group, and
the few collective operations that keep the processes' decisions identical.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
Without them train.py is one process, World().active is False, and every function here returns
its input without communicating. With them (even for one process: torchrun --nproc-per-node 1
runs the same distributed code, NCCL included, on a single GPU), the gradients are averaged by
DistributedDataParallel (NCCL on CUDA, gloo on CPU), and everything that could differ between
processes is decided once for all of them:

- each step's loss sum and token count are summed over the processes, and a stop (Ctrl-C or
  SIGTERM on any process, the time budget on any) or a periodic checkpoint applies to all at
  the same step (step_sync: one small all-reduce per step);
- validation runs on every process and all use rank 0's numbers (from_main), so the NT-ASGD
  trigger, the plateau annealing and fine-tuning's stop agree;
- the random-number states of all processes are gathered into rank 0's checkpoints (gather),
  so that a resume restores each process's own.
"""
import hashlib
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from lm import cli
from lm.head import map_hidden


class DistributedError(cli.UserError):
    """A distributed setup that cannot run, reported as one line."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launched: bool = False  # started by torchrun (WORLD_SIZE is set), even as its only process

    @property
    def active(self):
        return self.size > 1 or self.launched

    @property
    def main(self):
        """The process that prints, draws the progress bar and writes the run directory."""
        return self.rank == 0


ONE_PROCESS = World()


def world_from_env(env=None):
    """The World that torchrun's environment variables describe (one process without them)."""
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", 1))
        rank, local_rank = int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except ValueError as e:
        raise DistributedError(f"bad torchrun environment: {e}") from None
    return World(rank, size, local_rank, local_size, launched="WORLD_SIZE" in env)


def setup(world, device_type, timeout_s):
    """Join the process group (a no-op for one process); a rendezvous that fails or times out
    is a DistributedError rather than a hang or a traceback."""
    if not world.active:
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        dist.barrier()
    except (RuntimeError, ValueError, dist.DistError) as e:
        raise DistributedError(f"rank {world.rank} of {world.size}: the rendezvous at "
                               f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')} failed "
                               f"within {timeout_s:g} s ({cli.first_line(e)}); are all processes started?") from None


def teardown(world):
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code, env=None):
    """End the script with `code`. A process started by torchrun ends without finalizing the
    interpreter (os._exit, once stdout and stderr are flushed). DistributedDataParallel keeps
    the gloo backend alive past destroy_process_group (a reference inside torch that we cannot
    drop), so its worker and socket threads still run while the interpreter finalizes and the
    C++ destructors run at exit; that teardown racing those threads is the likely source of
    rank 0's rare abort after a finished run ("terminate called without an active exception",
    SIGABRT). Every file of the run is written and closed by then: nothing is left to clean up."""
    try:
        active = world_from_env(env).active
    except DistributedError:
        active = False
    if not active:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device(requested, world):
    """Each process's device: cuda:LOCAL_RANK when the run asks for CUDA, else the CPU."""
    if world.active and requested.startswith("cuda"):
        return f"cuda:{world.local_rank}"
    return requested


def cpu_threads(world):
    """Threads per process on CPU: the cores divided among this machine's processes."""
    return max(1, (os.cpu_count() or 1) // world.local_size)


def columns(data, world):
    """This process's contiguous block of the columns of a batchified stream (rows, batch)."""
    if not world.active:
        return data
    width = data.size(1) // world.size
    return data[:, world.rank * width:(world.rank + 1) * width]


def step_sync(world, ce_sum, tokens, flags, seconds):
    """(ce_sum and tokens summed over all processes, flags or-ed over them, rank 0's seconds):
    one all-reduce. Rank 0's clock is the one that time-based schedules read, so that every
    process sets the same learning rate."""
    if not world.active:
        return ce_sum, tokens, flags, seconds
    rest = [float(tokens), seconds if world.main else 0.0, *map(float, flags)]
    t = torch.cat([ce_sum.double().view(1), torch.tensor(rest, dtype=torch.float64, device=ce_sum.device)])
    dist.all_reduce(t)
    values = t.tolist()
    return t[0], int(values[1]), tuple(v > 0 for v in values[3:]), values[2]


def check_identical(world, tensors, what):
    """Raise DistributedError unless every process holds bit-identical tensors (name -> tensor):
    a digest of each process's bytes is compared, nothing large is sent."""
    if not world.active:
        return
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digests = gather(world, digest.hexdigest())
    if len(set(digests)) > 1:
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise DistributedError(f"the processes hold different {what} (ranks {differ} differ from rank 0)")


def join_columns(world, hidden):
    """Every process's recurrent state (tensors of shape (layers, columns, size), nested in
    lists and tuples) joined along the columns in rank order: the state of the global batch."""
    if not world.active or hidden is None:
        return hidden
    return _cat_columns(gather(world, map_hidden(lambda h: h.detach().cpu(), hidden)))


def split_columns(hidden, world):
    """This process's columns of a global recurrent state (the inverse of join_columns)."""
    if not world.active or hidden is None:
        return hidden

    def own(h):
        width = h.size(1) // world.size
        return h[:, world.rank * width:(world.rank + 1) * width]

    return map_hidden(own, hidden)


def _cat_columns(states):
    if isinstance(states[0], torch.Tensor):
        return torch.cat(states, dim=1)
    return type(states[0])(_cat_columns(parts) for parts in zip(*states, strict=True))


def any_rank(world, flag, device="cpu"):
    """True on every process when it is true on any."""
    if not world.active:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(world, values):
    """Rank 0's floats, on every process."""
    if not world.active:
        return values
    out = [list(values)]
    dist.broadcast_object_list(out, src=0)
    return out[0]


def gather(world, obj):
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] for one process)."""
    if not world.active:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
