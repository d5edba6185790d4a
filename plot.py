"""Draw the learning curves of one or more runs: loss per epoch and validation accuracy.

    python plot.py checkpoints/rnn checkpoints/lstm -o curves.png
    python plot.py checkpoints/rnn checkpoints/lstm --labels "RNN 128x4" "LSTM 128x4" -o curves.png
    python plot.py ~/runs/lstm-2h ~/runs/awd-2h --x minutes --ppl -o headline.png

Left panel: training loss (solid) and validation loss (dashed) in nats per token, or with --ppl
their perplexities on a log scale, one colour per run; right panel: validation next-token
accuracy. Against epochs, or with --x minutes against the run's training time (validation
included, summed over resumed sessions). All of it comes from each run's metrics.jsonl.
"""
import argparse
import sys
from pathlib import Path

from lm import checkpoint, cli
from lm.checkpoint import METRICS


class PlotError(Exception):
    """A run that cannot be drawn, reported as one line."""


def read_metrics(run):
    """checkpoint.read_metrics, with a PlotError where there is nothing to draw."""
    path = Path(run) / METRICS
    if not path.is_file():
        raise PlotError(f"{run} has no {METRICS}: is it a run directory made by train.py?")
    try:
        rows = checkpoint.read_metrics(run)
    except checkpoint.CheckpointError as e:
        raise PlotError(str(e)) from None
    if not rows:
        raise PlotError(f"{path} is empty: the run has not finished an epoch yet")
    return rows


def minutes(rows):
    """Each row's training time in minutes: its "minutes" field, or for rows written before that
    field existed the running sum of epoch_seconds."""
    total, out = 0.0, []
    for r in rows:
        total += r["epoch_seconds"] / 60
        out.append(r.get("minutes", total))
    return out


def plot_runs(runs, out, labels=None, title=None, x="epoch", ppl=False):
    """Write a two-panel PNG (loss or perplexity, accuracy) of the runs' per-epoch metrics to
    `out`, against epochs or minutes."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    problem = (f"-o {out} is a folder, not a file" if Path(out).is_dir()
               else cli.folder_problem(Path(out).parent, f"-o {out}: its folder"))
    if problem:
        raise PlotError(problem)
    labels = labels or [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise PlotError(f"{len(labels)} labels for {len(runs)} runs")
    metrics = [read_metrics(r) for r in runs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (rows, label) in enumerate(zip(metrics, labels, strict=True)):
        color = f"C{i}"
        xs = minutes(rows) if x == "minutes" else [r["epoch"] for r in rows]
        kind = "ppl" if ppl else "loss"
        ax_loss.plot(xs, [r[f"train_{kind}"] for r in rows], color=color, marker=".", label=f"{label} train")
        ax_loss.plot(xs, [r[f"val_{kind}"] for r in rows], color=color, marker=".", linestyle="--",
                     label=f"{label} val")
        if all("val_accuracy" in r for r in rows):
            ax_acc.plot(xs, [100 * r["val_accuracy"] for r in rows], color=color, marker=".", label=label)
    xlabel = "training minutes (validation included)" if x == "minutes" else "epoch"
    if ppl:
        ax_loss.set_yscale("log")
        ax_loss.set(xlabel=xlabel, ylabel="perplexity", title="perplexity")
    else:
        ax_loss.set(xlabel=xlabel, ylabel="cross-entropy (nats per token)", title="loss")
    ax_acc.set(xlabel=xlabel, ylabel="next-token accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        if x == "epoch":
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
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories written by train.py")
    p.add_argument("-o", "--out", default="curves.png", help="PNG file to write (default: curves.png)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: directory names)")
    p.add_argument("--title", default=None, help="figure title (default: none)")
    p.add_argument("--x", choices=("epoch", "minutes"), default="epoch",
                   help="horizontal axis: epochs, or minutes of training (default: epoch)")
    p.add_argument("--ppl", action="store_true", help="draw perplexity on a log scale instead of the loss")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        plot_runs(args.runs, args.out, args.labels, args.title, args.x, args.ppl)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
