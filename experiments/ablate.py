"""Technique-by-technique ablation ladder of AWD-LSTM at a size you choose.

    python -m experiments.ablate --data ../shared/data/wikitext-2 --train-lines 2500 --eval-lines 1000 \\
        --emsize 100 --nhid 300 --epochs 3 --out results/ablation -- --nonmono 1

Every rung trains AWD-LSTM's architecture with some techniques on and the rest off, then scores
validation and test perplexity with evaluate.py, each script run as a user would run it. The
rungs, in order:

    none         no AWD-LSTM technique, but not a bare LSTM: per-step dropout at AWD-LSTM's
                 rates, SGD at the same lr with plateau annealing, fixed BPTT, untied, no AR/TAR
    weight drop  + DropConnect on hidden-to-hidden weights
    NT-ASGD      + NT-ASGD instead of SGD (no weight drop)
    both         weight drop + NT-ASGD
    + locked     + variational (locked) dropout
    + embedding  + embedding dropout
    + tying      + weight tying
    full         + AR/TAR and variable-length BPTT: all of AWD-LSTM

Each rung's run directory and the data subset land under --runs; each rung's per-epoch
metrics, valid/test numbers and the table (ablation.md, ablation.json) under --out. A rung
whose run directory exists is resumed, so an interrupted ladder picks up where it stopped.
Extra arguments after -- go to every train.py call (e.g. -- --nonmono 1).
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from data import SPLIT_FILES, split_paths
from experiments import scripts
from lm import cli
from lm.checkpoint import LAST, METRICS, has_run, load_checkpoint, read_metrics

OFF = ["--dropout-weight", "0", "--optimizer", "sgd", "--no-variable-bptt", "--dropout-embedding", "0",
       "--alpha", "0", "--beta", "0", "--no-locked-dropout", "--no-tied"]
WEIGHT_DROP = ["--dropout-weight", "0.5"]
NT_ASGD = ["--optimizer", "nt-asgd"]
LOCKED = ["--locked-dropout"]
EMBEDDING = ["--dropout-embedding", "0.1"]
TYING = ["--tied"]
REST = ["--alpha", "2", "--beta", "1", "--variable-bptt"]
RUNGS = [
    ("none", []),
    ("weight drop", WEIGHT_DROP),
    ("NT-ASGD", NT_ASGD),
    ("both", WEIGHT_DROP + NT_ASGD),
    ("+ locked", WEIGHT_DROP + NT_ASGD + LOCKED),
    ("+ embedding", WEIGHT_DROP + NT_ASGD + LOCKED + EMBEDDING),
    ("+ tying", WEIGHT_DROP + NT_ASGD + LOCKED + EMBEDDING + TYING),
    ("full", WEIGHT_DROP + NT_ASGD + LOCKED + EMBEDDING + TYING + REST),
]


def subset_corpus(src, dst, train_lines, eval_lines):
    """A copy of corpus folder `src` keeping the first `train_lines` lines of train and the
    first `eval_lines` of valid and test (None keeps a split whole)."""
    paths = split_paths(src)
    dst.mkdir(parents=True, exist_ok=True)
    for split, path in paths.items():
        target, keep = dst / SPLIT_FILES[split][0], train_lines if split == "train" else eval_lines
        if keep:
            with open(path) as f:
                target.write_text("".join(line for _, line in zip(range(keep), f, strict=False)))
        else:
            shutil.copyfile(path, target)
    return dst


def run_rung(name, flags, common, out, runs, eval_batch_size):
    slug = name.replace("+ ", "plus-").replace(" ", "-").lower()
    run_dir = runs / slug
    argv = ["--model", "awd-lstm", *common[0], *OFF, *flags, *common[1], "--save", str(run_dir)]
    code, _ = scripts.run("train.py", ["--resume", str(run_dir)] if has_run(run_dir) else argv)
    if code != 0:
        raise SystemExit(f"rung {name!r} failed (exit {code}); see above")
    # Training and validation time over all sessions of the run, as train.py counts it.
    last = load_checkpoint(run_dir, LAST)
    minutes, cfg = last["state"]["seconds"] / 60, last["train_config"]
    scores = {}
    for split in ("valid", "test"):
        path = out / f"{slug}-{split}.json"
        argv = [run_dir, "--split", split, "--batch-size", eval_batch_size, "--json", path]
        code, _ = scripts.run("evaluate.py", argv)
        if code != 0:
            raise SystemExit(f"scoring rung {name!r} on {split} failed (exit {code}); see above")
        scores[split] = json.loads(path.read_text())["ppl"]
    shutil.copyfile(run_dir / METRICS, out / f"{slug}-metrics.jsonl")
    rows = read_metrics(run_dir)
    averaged = [r["epoch"] for r in rows if r["averaged"]]
    return {"rung": name, "flags": " ".join(flags) or "(all off)", "val_ppl": scores["valid"],
            "test_ppl": scores["test"], "epochs": len(rows), "averaged_from_epoch": min(averaged, default=None),
            "minutes": round(minutes, 1),
            "config": {k: cfg[k] for k in ("emsize", "nhid", "nlayers", "batch_size", "bptt", "lr",
                                           "optimizer", "variable_bptt", "tied", "dropout_weight")}}


def write_table(rows, out, header):
    columns = "rung | techniques on top of 'none' | val ppl | test ppl | epochs | averaged from epoch | minutes"
    lines = [header, "", f"| {columns} |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rung']} | {r['flags']} | {r['val_ppl']:.2f} | {r['test_ppl']:.2f} | {r['epochs']} | "
              f"{r['averaged_from_epoch'] or '-'} | {r['minutes']} |" for r in rows]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    (out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")


@cli.user_errors
def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="corpus folder with train.txt/valid.txt/test.txt")
    p.add_argument("--train-lines", type=cli.count, default=None,
                   help="train on only the first N lines of the training split (default: all)")
    p.add_argument("--eval-lines", type=cli.count, default=None,
                   help="validate and test on only the first N lines of those splits (default: all)")
    p.add_argument("--emsize", type=cli.count, default=100, help="embedding size (default: 100)")
    p.add_argument("--nhid", type=cli.count, default=300, help="hidden units of the inner layers (default: 300)")
    p.add_argument("--nlayers", type=cli.count, default=3, help="LSTM layers (default: 3)")
    p.add_argument("--epochs", type=cli.count, default=4, help="epochs per rung (default: 4)")
    p.add_argument("--batch-size", type=cli.count, default=40, help="training batch size (default: 40)")
    p.add_argument("--bptt", type=cli.count, default=35, help="BPTT length (default: 35)")
    p.add_argument("--lr", type=float, default=30.0, help="learning rate of every rung, SGD or NT-ASGD (default: 30)")
    p.add_argument("--eval-batch-size", type=cli.count, default=10,
                   help="batch size of the final valid/test scoring (default: 10)")
    p.add_argument("--rungs", default=None,
                   help="comma-separated rung names to run (default: all): " + ", ".join(n for n, _ in RUNGS))
    p.add_argument("--out", default="results/ablation",
                   help="folder for the table and each rung's numbers (default: results/ablation)")
    p.add_argument("--runs", default="checkpoints/ablation",
                   help="folder for the rungs' run directories and the data subset (default: checkpoints/ablation)")
    args, extra = p.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if extra and not extra[0].startswith("--"):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    cli.check_folder(args.out, "--out")
    cli.check_folder(args.runs, "--runs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subset = args.train_lines or args.eval_lines
    runs = Path(args.runs)
    data = Path(args.data)
    if subset:
        data = subset_corpus(data, runs / "data", args.train_lines, args.eval_lines)
    sizes = ["--data", str(data), "--emsize", str(args.emsize), "--nhid", str(args.nhid),
             "--nlayers", str(args.nlayers), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
             "--bptt", str(args.bptt), "--lr", str(args.lr)]
    wanted = set(args.rungs.split(",")) if args.rungs else {n for n, _ in RUNGS}
    rows = [run_rung(name, flags, (sizes, extra), out, runs, args.eval_batch_size)
            for name, flags in RUNGS if name in wanted]
    header = (f"AWD-LSTM ablation: emsize {args.emsize}, nhid {args.nhid}, {args.nlayers} layers, "
              f"{args.epochs} epochs, batch {args.batch_size}, bptt {args.bptt}, lr {args.lr}, the first "
              f"{args.train_lines or 'all'} train lines and {args.eval_lines or 'all'} valid/test lines of "
              f"{args.data}; extra flags: {' '.join(extra) or 'none'}; "
              f"perplexity at eval batch size {args.eval_batch_size}.")
    write_table(rows, out, header)
    print(Path(out / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
