"""Train a language model on words or characters: the classic baseline, AWD-LSTM, the QRNN or a
Transformer baseline.

    python train.py --data ../shared/data/wikitext-2 --epochs 6 --save checkpoints/wt2-small
    python train.py --level char --data ../shared/data/tinyshakespeare/input.txt --save checkpoints/shakespeare
    python train.py --preset awd-lstm-wt2 --data ../shared/data/wikitext-2 --save checkpoints/awd
    python train.py --preset qrnn-wt2 --data ../shared/data/wikitext-2 --save checkpoints/qrnn
    python train.py --preset transformer-wt2 --data ../shared/data/wikitext-2 --save checkpoints/transformer
    python train.py --finetune checkpoints/awd          # AWD-LSTM's second stage, into awd-finetune
    python train.py --resume checkpoints/wt2-small --epochs 10    # continue, possibly longer

The run directory gets model.pt (best validation loss; averaged weights once NT-ASGD averages),
last.pt (latest state, for --resume), metrics.jsonl (one line per epoch), config.json and, with --plot,
curves.png.
Ctrl-C or SIGTERM stops after the current batch and saves last.pt; --resume continues from exactly
there. With --checkpoint-every MINUTES, last.pt is also written mid-epoch, so that a run killed
outright (SIGKILL, power loss) resumes from its latest checkpoint with the same results.
"""
import json
import math
import sys
import time

import torch

from lm import cli, distributed, faults
from lm.checkpoint import BEST, LAST, append_metrics
from lm.config import ConfigError, resolve_config
from lm.distributed import ONE_PROCESS
from lm.memory import keep_freed_memory
from lm.plots import PlotError, plot_runs
from lm.runlock import RunLock
from lm.training import DivergedError, set_lr, train_epoch
from lm.trainrun import Run

MAX_LOSS = 700.0  # nats per token; e**700 is near the float64 limit, and a loss this large has diverged


def end_epoch(run, t0, tokens0):
    """Validate, log, update the schedule and NT-ASGD, and save; returns the metrics row."""
    cfg, state, level = run.cfg, run.state, run.corpus.level
    if not state.train_tokens:
        raise DivergedError(f"every step of epoch {state.epoch + 1} had inf/NaN gradients and was skipped by "
                            "fp16's loss scaling; train with --dtype fp32, or bf16 where the hardware has it")
    train_seconds = time.time() - t0
    val = run.validate()
    improved = val.loss < state.best_val_loss
    train_loss = state.train_loss_sum / state.train_tokens
    for name, loss in (("training", train_loss), ("validation", val.loss)):
        if not loss < MAX_LOSS:  # also NaN
            raise DivergedError(f"{name} loss is {loss:.4g} at the end of epoch {state.epoch + 1}: training "
                                "diverged; lower --lr or --clip (nothing of this epoch was saved)")
    row = {"epoch": state.epoch + 1, "train_loss": train_loss, "train_ppl": math.exp(train_loss),
           "val_loss": val.loss, "val_ppl": math.exp(val.loss), "val_accuracy": val.accuracy,
           **({"train_bpc": train_loss / math.log(2), "val_bpc": val.bits} if level == "char" else {}),
           "lr": run.optimizer.param_groups[0]["lr"], "averaged": run.averaging.active,
           "train_tokens": state.train_tokens,
           "epoch_seconds": round(time.time() - t0, 2), "minutes": round(run.elapsed() / 60, 4),
           "train_tokens_per_s": round((state.train_tokens - tokens0) / train_seconds, 1),
           **({"partial": True} if run.time_up() else {})}
    faults.point("validated")
    state.epoch, state.position, state.batches, state.skipped_rows = state.epoch + 1, 0, 0, 0
    state.train_loss_sum, state.train_tokens = 0.0, 0
    if cfg["schedule"] == "plateau" and not improved:
        state.lr /= cfg["anneal"]
        set_lr(run.optimizer, state.lr)
    note, state.finished = run.averaging.end_of_epoch(run.model, val.loss, state.epoch)
    if run.averaging.active and run.averaging.count == 0:
        faults.point("averaging")
    run.tick()
    if improved:
        state.best_val_loss = val.loss
        with run.averaging.weights(run.model):  # the weights that were just evaluated
            run.save(BEST)
        faults.point("best-saved")
    if run.world.main:
        append_metrics(run.dir, row)  # before last.pt: a resume from the previous last.pt drops this line again
    faults.point("logged")
    run.save(LAST)
    val_text = (f"val bpc {row['val_bpc']:.4f} | val acc {val.accuracy:.2%}" if level == "char"
                else f"val ppl {row['val_ppl']:8.2f}")
    run.say(f"epoch {state.epoch:3d} | train loss {train_loss:.4f} | val loss {val.loss:.4f} | {val_text} | "
            f"lr {row['lr']:.4g} | {row['epoch_seconds']:.0f}s" + (" | saved best" if improved else "")
            + (f" | {note}" if note else "") + (" | time budget reached" if row.get("partial") else ""))
    return row


def fit(cfg, ckpt=None, mode="new", world=ONE_PROCESS, lock=None):
    """Train according to cfg; returns 0 when finished and 130 when stopped by Ctrl-C. lock:
    the run directory's RunLock, held by the caller (none: no lock)."""
    run = Run(cfg, ckpt, mode, world, lock)
    nparams = sum(p.numel() for p in run.model.parameters())
    unit = "characters" if run.corpus.level == "char" else "words"
    processes = f" | {world.size} processes" if world.active else ""
    run.say(f"{run.corpus.source}: {len(run.corpus.itos):,} {unit}, {len(run.corpus.train):,} train tokens | "
            f"{nparams:,} parameters | {run.device}, {cfg['dtype']}{processes} | run dir {run.dir}")
    if mode == "finetune":  # the model must beat its own starting point to be saved
        run.state.best_val_loss = run.validate().loss
        run.say(f"fine-tuning from val ppl {math.exp(run.state.best_val_loss):.2f}")
    with cli.StopOnInterrupt() as stop:
        while (run.state.epoch < cfg["epochs"] and not run.state.finished
               and not distributed.any_rank(world, run.time_up(), run.device)):
            t0, tokens0 = time.time(), run.state.train_tokens
            requested = train_epoch(run, lambda: stop.requested)
            if requested and not run.epoch_done():  # mid-epoch: last.pt keeps the recurrent state
                run.tick()
                run.save(LAST)
                run.say(f"stopped in epoch {run.state.epoch + 1} after batch {run.state.batches}; resume "
                        f"with python train.py --resume {run.dir}")
                return 130
            end_epoch(run, t0, tokens0)
            if distributed.any_rank(world, stop.requested, run.device):
                run.say(f"stopped after epoch {run.state.epoch}; resume with python train.py --resume {run.dir}")
                return 130
    distributed.check_identical(world, dict(run.model.named_parameters()), "weights")
    distributed.check_identical(world, run.averaging.average, "averaged weights")
    run.say(f"done: best val loss {run.state.best_val_loss:.4f} (ppl {math.exp(run.state.best_val_loss):.2f}) | "
            f"{run.state.seconds / 60:.1f} min | evaluate with python evaluate.py {run.dir}")
    if cfg["plot"] and world.main:
        draw_run(run.dir)
    return 0


def draw_run(run_dir):
    """The run's own curves.png; plotting trouble is a warning, since training has finished."""
    try:
        plot_runs([run_dir], run_dir / "curves.png")
        print(f"curves: {run_dir / 'curves.png'}")
    except (ImportError, PlotError) as e:
        print(f"warning: no curves.png: {e}", file=sys.stderr)


@cli.user_errors
def main(argv=None):
    world = ONE_PROCESS
    keep_freed_memory()  # large per-step buffers reused, not page-faulted in anew (README: Speed)
    try:
        world = distributed.world_from_env()
        cfg, ckpt, mode = resolve_config(argv, __doc__)
        if cfg["batch_size"] % world.size:
            raise ConfigError(f"--batch-size {cfg['batch_size']} is the global batch and does not split over "
                              f"{world.size} processes; make it a multiple of {world.size}")
        if world.main:
            print(json.dumps(cfg, indent=2))
        if world.active and distributed.device(cfg["device"], world) == "cpu":
            torch.set_num_threads(distributed.cpu_threads(world))
        distributed.setup(world, torch.device(cfg["device"]).type, cfg["dist_timeout"])
        with RunLock(cfg["save"], enabled=world.main) as lock:  # only rank 0 writes
            return fit(cfg, ckpt, mode, world, lock)
    except torch.distributed.DistError as e:  # another process failed or vanished
        print(f"error: rank {world.rank}: lost contact with the other processes ({cli.first_line(e)})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: aborted by a second Ctrl-C, without saving; last.pt holds the run's latest checkpoint",
              file=sys.stderr)
        return 130
    finally:
        distributed.teardown(world)


if __name__ == "__main__":
    distributed.exit_process(main())
