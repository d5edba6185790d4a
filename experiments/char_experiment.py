"""Character-level experiment on Tiny Shakespeare: vanilla RNN vs LSTM (both 4x128), and our best
LSTM, each trained, scored and sampled with train.py, evaluate.py and generate.py.

    python -m experiments.char_experiment --data ../shared/data/tinyshakespeare/input.txt
    python -m experiments.char_experiment --only rnn-128x4 lstm-128x4     # some runs (e.g. one per core)
    python -m experiments.char_experiment --only                           # no training: rebuild the report

The 4x128 pair repeats a published comparison (embedding -> 4 recurrent layers of 128 -> linear,
no dropout), which found the RNN better: test loss 1.5644 vs 1.6645 nats/char, accuracy 53.55%
vs 51.38%. Both get the same epochs, optimizer and data. `best` is AWD-LSTM with the character
defaults of train.py (2x512, weight drop, locked dropout, AR/TAR, Adam) under a time budget;
`best-cosine` is the same model with a cosine lr schedule over --cosine-epochs. The `-long` runs
continue copies of the 4x128 pair to --long-epochs, to see where each ends up with more time, and
`lstm-128x2` is the LSTM with 2 layers instead of 4, to see what the depth costs it.

Run directories go to --runs/char-<name>; a run that exists is resumed (a finished one is only
re-scored). Into --out go each run's metrics, test / valid / valid+test scores (batch 1),
samples at temperatures 0.7, 1 and 4, the figures and table.md with every run found.
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from experiments import scripts
from lm import cli
from lm.checkpoint import LAST, METRICS, has_run, load_checkpoint
from lm.plots import plot_runs

PUBLISHED = {"rnn-128x4": (1.5644, 0.5355), "lstm-128x4": (1.6645, 0.5138)}
SMALL = ["--emsize", "128", "--nhid", "128", "--nlayers", "4", "--dropout", "0"]
TEMPERATURES = (0.7, 1.0, 4.0)
SPLITS = ("test", "valid", "valid+test")
RUNS = ("rnn-128x4", "lstm-128x4", "best", "best-cosine", "rnn-128x4-long", "lstm-128x4-long", "lstm-128x2")


def run_args(name, args):
    """train.py flags of each run, beyond --level char --data --save."""
    if name == "best":  # the character defaults: Adam, lr / 4 on a plateau, under a time budget
        return ["--model", "awd-lstm", "--epochs", str(args.best_epochs), "--max-minutes", str(args.best_minutes)]
    if name == "best-cosine":  # the same with a cosine schedule over a number of epochs that fits the budget
        return ["--model", "awd-lstm", "--schedule", "cosine", "--epochs", str(args.cosine_epochs),
                "--max-minutes", str(args.best_minutes)]
    if name.endswith("-long"):
        return ["--epochs", str(args.long_epochs)]
    if name == "lstm-128x2":  # the 4x128 LSTM with half the layers: is depth what holds it back?
        return ["--model", "lstm", *SMALL[:4], "--nlayers", "2", "--dropout", "0", "--epochs", str(args.epochs)]
    model = {"rnn-128x4": "rnn_tanh", "lstm-128x4": "lstm"}[name]
    return ["--model", model, *SMALL, "--epochs", str(args.epochs)]


def train_run(name, run_dir, args):
    if name.endswith("-long") and not run_dir.exists():  # continue a copy of the finished 25-epoch run
        base = run_dir.with_name(run_dir.name.removesuffix("-long"))
        if not has_run(base):
            raise SystemExit(f"{name} continues {base}: train {base.name.removeprefix('char-')} first")
        shutil.copytree(base, run_dir)
    if has_run(run_dir):
        extra = run_args(name, args)
        budget = [a for i in range(0, len(extra), 2) if extra[i] in ("--epochs", "--max-minutes")
                  for a in extra[i: i + 2]]
        argv = ["--resume", str(run_dir), *budget, "--plot"]
    else:
        argv = ["--level", "char", "--data", args.data, "--save", str(run_dir), "--seed", str(args.seed),
                "--plot", *run_args(name, args)]
    print(f"== {name}: python train.py {' '.join(argv)}", flush=True)
    if scripts.run("train.py", argv)[0] != 0:
        raise SystemExit(f"training {name} failed")


def score_run(name, run_dir, out):
    for split in SPLITS:
        path = out / f"{name}-{split}.json"
        if scripts.run("evaluate.py", [run_dir, "--split", split, "--batch-size", "1", "--json", path])[0] != 0:
            raise SystemExit(f"scoring {name} on {split} failed")
    with open(out / f"{name}-samples.txt", "w") as f:
        for t in TEMPERATURES:
            text = sample(run_dir, t)
            f.write(f"--- temperature {t}, seed 1, 600 characters, no prompt ---\n{text}\n\n")


def sample(run_dir, temperature):
    """generate.py's output for one temperature, captured."""
    code, out = scripts.run("generate.py", [run_dir, "--chars", "600", "--temperature", temperature, "--seed", "1"],
                            capture=True)
    if code != 0:
        raise SystemExit(f"sampling {run_dir} failed")
    return out.rstrip("\n")


def report(runs_dir, out):
    """table.md from every scored run, and the figures."""
    header = ("| run | parameters | epochs | train minutes | test loss (nats/char) | test bpc | test accuracy "
              "| valid loss | last-10% loss | published test loss | published accuracy |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    found = []
    for name in RUNS:
        run_dir = runs_dir / f"char-{name}"
        if not (out / f"{name}-test.json").exists():
            continue
        found.append((name, run_dir))
        s = {split: json.loads((out / f"{name}-{split}.json").read_text()) for split in SPLITS}
        ckpt = load_checkpoint(run_dir, LAST)
        params = sum(v.numel() for v in ckpt["model"].values())
        pub_loss, pub_acc = PUBLISHED.get(name, (None, None))
        lines.append(
            f"| {name} | {params:,} | {ckpt['state']['epoch']} | {ckpt['state']['seconds'] / 60:.1f} "
            f"| {s['test']['loss']:.4f} | {s['test']['bpc']:.4f} | {s['test']['accuracy']:.2%} "
            f"| {s['valid']['loss']:.4f} | {s['valid+test']['loss']:.4f} "
            f"| {pub_loss or '-'} | {f'{pub_acc:.2%}' if pub_acc else '-'} |")
        shutil.copy(run_dir / METRICS, out / f"{name}-metrics.jsonl")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figures = {"curves-rnn-vs-lstm.png": (("rnn-128x4", "lstm-128x4"), "4x128: vanilla RNN vs LSTM, 25 epochs"),
               "curves-rnn-vs-lstm-long.png": (("rnn-128x4-long", "lstm-128x4-long"), "4x128, continued"),
               "curves-depth.png": (("rnn-128x4", "lstm-128x4", "lstm-128x2"), "RNN vs LSTM, 4 and 2 layers of 128"),
               "curves-best.png": (("best", "best-cosine"), "AWD-LSTM 2x512, plateau vs cosine lr")}
    found = dict(found)
    for file, (names, title) in figures.items():
        names = [n for n in names if n in found]
        if names:
            plot_runs([found[n] for n in names], out / file, names, f"Tiny Shakespeare, {title}")


def get_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/tinyshakespeare/input.txt",
                   help="Tiny Shakespeare: the local input.txt or the hub name tinyshakespeare "
                        "(default: ../shared/data/tinyshakespeare/input.txt)")
    p.add_argument("--only", nargs="*", choices=RUNS, default=list(RUNS),
                   help="runs to train and score, in order (default: all); with no names, only the "
                        "report is rebuilt")
    p.add_argument("--epochs", type=cli.count, default=25, help="epochs of the 4x128 RNN and LSTM (default: 25)")
    p.add_argument("--long-epochs", type=cli.count, default=60,
                   help="epochs that rnn-128x4-long and lstm-128x4-long continue their run to (default: 60)")
    p.add_argument("--best-epochs", type=cli.count, default=40, help="epoch cap of the best run (default: 40)")
    p.add_argument("--best-minutes", type=float, default=55,
                   help="training-time budget of each best run (default: 55)")
    p.add_argument("--cosine-epochs", type=cli.count, default=16,
                   help="epochs of best-cosine, whose lr reaches 0 at the last (default: 16)")
    p.add_argument("--seed", type=int, default=1111, help="seed of every run (default: 1111)")
    p.add_argument("--threads", type=cli.count, default=None,
                   help="torch threads of each script (default: torch's choice)")
    p.add_argument("--runs", default="checkpoints", help="where the run directories go (default: checkpoints)")
    p.add_argument("--out", default="results/char", help="where results go (default: results/char)")
    return p


@cli.user_errors
def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    cli.check_folder(args.runs, "--runs")
    cli.check_folder(args.out, "--out")
    if not args.best_minutes > 0:
        parser.error(f"--best-minutes must be positive, got {args.best_minutes}")
    if args.threads:  # for the scripts, each in its own process
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    runs_dir, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        run_dir = runs_dir / f"char-{name}"
        train_run(name, run_dir, args)
        score_run(name, run_dir, out)
    report(runs_dir, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
