"""The table of a set of budget trials: one row per run, with the flags that set it apart, its
training minutes, epochs, training tokens and best validation perplexity.

    python -m experiments.trials_table ~/runs/trials/p1-*                  # run directories
    python -m experiments.trials_table results/budget-trials/p1-awd-adam-onecycle \\
        results/budget-trials/p1-awd-sgd-avg50                            # their records

A run is a run directory (config.json, metrics.jsonl) or the prefix of its two recorded copies
(PREFIX-config.json, PREFIX-metrics.jsonl), as experiments/budget_trials.sh leaves them.
"""
import argparse
import json
from pathlib import Path

from lm import cli

# Flags every trial shares or that only say where and how it ran.
IGNORED = {"save", "log_interval", "device", "dtype", "val_dtype", "lstm_kernel", "plot", "finetune",
           "checkpoint_every", "max_batches"}


def run_files(run):
    """(config.json, metrics.jsonl) of a run directory or of a record prefix."""
    path = Path(run)
    if path.is_dir():
        files = path / "config.json", path / "metrics.jsonl"
    else:
        files = path.with_name(f"{path.name}-config.json"), path.with_name(f"{path.name}-metrics.jsonl")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise cli.UserError(f"{run}: no {' or '.join(missing)}")
    return files


def row(name, cfg, rows, varying):
    last = rows[-1]
    minutes = last.get("minutes", sum(r["epoch_seconds"] for r in rows) / 60)
    # Rows written before train_tokens was logged: tokens/s x epoch time, which counts validation too.
    estimated = any("train_tokens" not in r for r in rows)
    tokens = sum(r.get("train_tokens", r["train_tokens_per_s"] * r["epoch_seconds"]) for r in rows)
    cells = [json.dumps(cfg.get(k)) for k in varying]
    return (f"| {name} | " + " | ".join(cells)
            + f" | {minutes:.1f} | {last['epoch']}{' (partial)' if last.get('partial') else ''}"
            + f" | {'<' if estimated else ''}{tokens / 1e6:.2f}M | {min(r['val_ppl'] for r in rows):.2f} |")


def table(runs):
    loaded = {}
    for run in runs:
        config, metrics = run_files(run)
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        loaded[Path(run).name] = json.loads(config.read_text()), rows
    keys = sorted({k for cfg, _ in loaded.values() for k in cfg} - IGNORED)
    varying = [k for k in keys if len({json.dumps(cfg.get(k)) for cfg, _ in loaded.values()}) > 1]
    lines = ["| trial | " + " | ".join(varying) + " | minutes | epochs | tokens | val ppl |",
             "|" + "---|" * (len(varying) + 5)]
    return lines + [row(name, cfg, rows, varying) for name, (cfg, rows) in loaded.items() if rows]


def get_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories, or record prefixes (PREFIX-config.json)")
    return parser


@cli.user_errors
def main(argv=None):
    args = get_parser().parse_args(argv)
    print("\n".join(table(args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
