"""Learning curves of runs from their metrics.jsonl: the figure that plot.py and train.py --plot
draw (loss or perplexity, and validation accuracy, against epochs or minutes)."""
from pathlib import Path

from lm import checkpoint, cli
from lm.checkpoint import METRICS


class PlotError(cli.UserError):
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

    if Path(out).is_dir():
        raise PlotError(f"-o {out} is a folder, not a file")
    cli.check_folder(Path(out).parent, f"-o {out}: its folder")
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
