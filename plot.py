"""Draw the learning curves of one or more runs: loss per epoch and validation accuracy.

    python plot.py checkpoints/rnn checkpoints/lstm -o curves.png
    python plot.py checkpoints/rnn checkpoints/lstm --labels "RNN 128x4" "LSTM 128x4" -o curves.png

Left panel: training loss (solid) and validation loss (dashed) in nats per token, one colour per
run; right panel: validation next-token accuracy. Both come from each run's metrics.jsonl.
"""
import argparse
import json
import sys
from pathlib import Path

from checkpoint import METRICS


class PlotError(Exception):
    """A run that cannot be drawn, reported as one line."""


def read_metrics(run):
    path = Path(run) / METRICS
    if not path.is_file():
        raise PlotError(f"{run} has no {METRICS}: is it a run directory made by train.py?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise PlotError(f"{path} is empty: the run has not finished an epoch yet")
    return rows


def plot_runs(runs, out, labels=None, title=None):
    """Write a two-panel PNG (loss, accuracy) of the runs' per-epoch metrics to `out`."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = labels or [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise PlotError(f"{len(labels)} labels for {len(runs)} runs")
    metrics = [read_metrics(r) for r in runs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (rows, label) in enumerate(zip(metrics, labels, strict=True)):
        color = f"C{i}"
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], color=color, label=f"{label} train")
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], color=color, linestyle="--", label=f"{label} val")
        if all("val_accuracy" in r for r in rows):
            ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], color=color, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (nats per token)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="next-token accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories written by train.py")
    p.add_argument("-o", "--out", default="curves.png", help="PNG file to write (default: curves.png)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: directory names)")
    p.add_argument("--title", default=None, help="figure title (default: none)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        plot_runs(args.runs, args.out, args.labels, args.title)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
