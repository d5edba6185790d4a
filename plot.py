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

from lm import cli
from lm.plots import plot_runs


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


@cli.user_errors
def main(argv=None):
    args = get_parser().parse_args(argv)
    plot_runs(args.runs, args.out, args.labels, args.title, args.x, args.ppl)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
