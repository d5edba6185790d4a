"""One training run of train.py: its config, corpus, model, optimizer, training state, NT-ASGD
averaging, recurrent state and run directory, built new, resumed from last.pt or fine-tuned from
model.pt; it saves its checkpoints and keeps the clocks of the time budget and --checkpoint-every.
The loop that trains it is lm/training.py's."""
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from data import batchify, load_corpus
from lm import cli, distributed, faults
from lm.checkpoint import (
    LAST,
    CheckpointError,
    build_checkpoint,
    check_vocab,
    has_run,
    kept_metrics,
    save_checkpoint,
    write_config,
    write_metrics,
)
from lm.config import ConfigError, model_config
from lm.distributed import ONE_PROCESS
from lm.head import map_hidden
from lm.models import build_model
from lm.optim import Averaging, LossScaler, planned_progress
from lm.runlock import RunLock
from lm.scoring import Scores, evaluate, sliding_evaluate
from lm.training import TrainState, load_optimizer_state, make_optimizer


class Run:
    """One training run: config, corpus, model, optimizer, training state, NT-ASGD averaging,
    the generator of sequence lengths, the recurrent state and the run directory. Built fresh
    (mode "new"), from last.pt ("resume"), or from a finished run's model.pt ("finetune").

    Under torchrun (world.active) each process holds its columns of the training batch and its
    own recurrent state and dropout masks; `net` is the model wrapped in DistributedDataParallel
    for the training steps, `model` the plain one that is evaluated, averaged and saved.

    Every check that can refuse comes before the first write into the run directory (start_writing):
    a refused command leaves the directory as it was."""

    def __init__(self, cfg, ckpt=None, mode="new", world=ONE_PROCESS, lock=None):
        self.cfg, self.mode, self.world = cfg, mode, world
        self.dir, self.lock = Path(cfg["save"]), lock or RunLock(cfg["save"], enabled=False)
        cli.check_folder(self.dir, "--save")
        self.device = torch.device(distributed.device(cfg["device"], world))
        if self.device.type == "cuda" and world.active:
            torch.cuda.set_device(self.device)
        self.corpus = load_corpus(cfg["data"], cfg["level"])
        if mode != "resume" and has_run(self.dir):
            raise ConfigError(f"{self.dir} already holds a run: pass --resume {self.dir} to continue "
                              "it, or choose another --save")
        if ckpt is not None:
            check_vocab(self.corpus, ckpt)
        torch.manual_seed(cfg["seed"])
        saved = ckpt["model_config"] if ckpt else None
        self.model = build_model(model_config(cfg, len(self.corpus.itos), saved), cfg["lstm_kernel"])
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
        self.model.to(self.device)
        if world.rank > 0:  # the same initial weights everywhere, then each process's own masks
            torch.manual_seed(cfg["seed"] + world.rank)
        self.net = self.model
        if world.active:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                               else None)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scaler = LossScaler(self.device.type, enabled=cfg["dtype"] == "fp16")
        self.state = TrainState(lr=cfg["lr"])
        finetuning = mode == "finetune" or cfg.get("finetune")  # also when a fine-tuning run resumes
        averaging_mode = ("finetune" if finetuning else "scheduled" if cfg["average_start"] is not None
                          else "trigger" if cfg["optimizer"] == "nt-asgd" else "off")
        self.averaging = Averaging(averaging_mode, cfg["nonmono"])
        self.lengths = torch.Generator().manual_seed(cfg["seed"])  # variable-BPTT lengths, apart from masks
        self.hidden = None  # the recurrent state the next batch continues from
        if mode == "finetune":
            self.averaging.start(self.model, epoch=0)
        if mode == "resume":
            self.restore(ckpt, averaging_mode)
        self.train_data = distributed.columns(batchify(self.corpus.train, cfg["batch_size"], self.device), world)
        stateless = self.model.context_window is not None  # validated by the sliding window, at batch 1
        self.val_data = batchify(self.corpus.valid, 1 if stateless else cfg["eval_batch_size"], self.device)
        self.start_writing()
        self.mark = self.saved_at = time.time()  # state.seconds counts up to mark
        self.clock = self.state.seconds  # under torchrun: rank 0's training time at the last step

    def start_writing(self):
        """Rank 0, once the other checks have passed: the run's lock and metrics.jsonl are checked,
        then the directory is made, the lock taken and config.json and metrics.jsonl (cut back to
        the checkpoint) written. Under torchrun the other processes share a refusal here rather than
        wait for rank 0 until --dist-timeout."""
        problem = None
        if self.world.main:
            try:
                self.lock.check()
                metrics, note = kept_metrics(self.dir, self.state.epoch)
                self.dir.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
                write_config(self.dir, self.cfg)
                if metrics is not None:
                    write_metrics(self.dir, metrics)
                if note:
                    print(note, file=sys.stderr)
            except OSError as e:  # from mkdir
                problem = f"cannot make the run directory {self.dir}: {e.strerror or e}"
            except CheckpointError as e:
                problem = str(e)
        (problem,) = distributed.from_main(self.world, [problem])
        if problem:
            raise ConfigError(problem)

    def restore(self, ckpt, averaging_mode):
        load_optimizer_state(self.optimizer, ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt.get("scaler"))  # absent in runs saved before fp16
        self.state = TrainState(**ckpt["state"])
        self.averaging = Averaging.from_state_dict({"mode": averaging_mode, **ckpt["averaging"]}, self.device)
        if ckpt["hidden"] is not None:
            self.hidden = map_hidden(lambda h: h.to(self.device), distributed.split_columns(ckpt["hidden"], self.world))
        rng = ckpt["rng"]
        saved = len(rng.get("ranks", [None]))
        if saved != self.world.size:
            raise ConfigError(f"this run was trained by {saved} process{'es' if saved > 1 else ''}, which each "
                              f"keep their own random state; resume it with {saved} (torchrun --nproc-per-node "
                              f"{saved}{' or plain python' if saved == 1 else ''}), not {self.world.size}")
        own = rng["ranks"][self.world.rank] if self.world.active else rng
        torch.set_rng_state(own["cpu"])
        if own["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(own["cuda"])
        if "lengths" in rng:  # runs saved before the separate generator draw from a fresh one
            self.lengths.set_state(rng["lengths"])

    def rng_state(self):
        """The random generators' states (a collective under torchrun: every process's are kept)."""
        own = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        ranks = distributed.gather(self.world, own)
        return {**own, "lengths": self.lengths.get_state(), **({"ranks": ranks} if self.world.active else {})}

    def save(self, name):
        """Write model.pt (the weights just evaluated, averaged or not; no running average) or
        last.pt (everything, with the recurrent state when stopped mid-epoch). Every process
        calls it (the random states and recurrent states are gathered); rank 0 writes."""
        last = name == LAST
        hidden = distributed.join_columns(self.world, self.hidden) if last and self.state.position > 0 else None
        rng = self.rng_state()
        if self.world.main:
            ckpt = build_checkpoint(self.model, self.optimizer, self.cfg, self.corpus, asdict(self.state),
                                    self.averaging.state_dict(with_average=last), hidden, rng,
                                    self.scaler.state_dict())
            save_checkpoint(ckpt, self.dir / name)
        if last:
            self.saved_at = time.time()

    def say(self, text):
        """Print on rank 0 only."""
        if self.world.main:
            print(text, flush=True)

    def checkpoint_due(self):
        """Whether the batch just run is followed by a mid-epoch last.pt: --checkpoint-every's
        minutes have passed since the last one (or, in the fault tests, its batch count is due)."""
        every = self.cfg.get("checkpoint_every")
        return (faults.checkpoint_due(self.state.batches + 1)
                or every is not None and time.time() - self.saved_at >= 60 * every)

    def tick(self):
        """Fold the time since the last tick into state.seconds."""
        now = time.time()
        self.state.seconds += now - self.mark
        self.mark = now

    def elapsed(self):
        return self.state.seconds + time.time() - self.mark

    def time_up(self):
        """The budget counts training and validation time over all sessions of the run."""
        return self.cfg["max_minutes"] is not None and self.elapsed() >= 60 * self.cfg["max_minutes"]

    def epoch_done(self):
        """Whether the epoch under way has run all its batches (all rows, or --max-batches)."""
        max_batches = self.cfg["max_batches"] or math.inf
        return self.state.position >= self.train_data.size(0) - 1 or self.state.batches >= max_batches

    def progress(self):
        """Fraction of the planned training done, by batches actually run or by time."""
        part = (self.state.position - self.state.skipped_rows) / (self.train_data.size(0) - 1)
        if self.cfg["max_batches"]:
            part = max(part, self.state.batches / self.cfg["max_batches"])
        seconds = self.clock if self.world.active else self.elapsed()
        return planned_progress(self.state.epoch + part, self.cfg["epochs"], seconds, self.cfg["max_minutes"])

    def validate(self):
        """Validation scores of the weights that model.pt would hold (the average once active);
        under torchrun every process validates and all take rank 0's numbers."""
        with self.averaging.weights(self.model):
            if self.model.context_window is None:
                scores = evaluate(self.model, self.val_data, self.cfg["val_dtype"])
            else:
                scores, _ = sliding_evaluate(self.model, self.val_data, self.cfg["val_dtype"])
        return Scores(*distributed.from_main(self.world, scores))
