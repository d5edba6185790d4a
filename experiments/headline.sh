#!/bin/sh
# The CPU headline: the 2-hour recipes (presets lstm-cpu-2h and awd-lstm-cpu-2h by default; the
# QRNN's qrnn-cpu-2h and the Transformer's transformer-cpu-2h for the families' head-to-head), one
# after the other, each alone on both cores, each scored on valid (batch 10 as in training; the
# Transformer through its sliding window) and test (batch 1, the paper's protocol), and the curves
# of every preset in $OUT drawn against minutes and epochs. Records: results/headline/ (the AMD EPYC
# with AVX512-BF16) and results/headline-avx2/ (an AMD EPYC with AVX2 only).
#
#     sh experiments/headline.sh                # both presets, or what is left of them
#     sh experiments/headline.sh lstm-cpu-2h    # one of them
#     sh experiments/headline.sh qrnn-cpu-2h transformer-cpu-2h
#
# Run from a clone with nothing else running (the time budget is part of the recipe). Run
# directories go to $RUNS (default ~/runs), the logs, scores, configs, metrics and figures to $OUT
# (default results/headline). Stopped (Ctrl-C, SIGTERM): run the same command again; a run is
# resumed from its last.pt and a split that already has its JSON is not scored again.
set -e
cd "$(dirname "$0")/.."
OUT=${OUT:-results/headline}
export OUT
for preset in ${@:-lstm-cpu-2h awd-lstm-cpu-2h}; do
  sh experiments/cpu_run.sh "$preset" --preset "$preset"
done
# The curves come from the copies above, so they can be drawn after a run directory is gone: every
# preset with metrics in $OUT, once there are two.
set -- "$OUT"/*-metrics.jsonl
if [ $# -ge 2 ]; then
  tmp=$(mktemp -d)
  for metrics in "$@"; do
    preset=$(basename "$metrics" -metrics.jsonl)
    mkdir "$tmp/$preset" && cp "$metrics" "$tmp/$preset/metrics.jsonl"
  done
  title="WikiText-2, 2 hours on 2 CPU cores"
  python plot.py "$tmp"/* --x minutes --ppl --title "$title" -o "$OUT/curves-minutes.png"
  python plot.py "$tmp"/* --ppl --title "$title" -o "$OUT/curves-epochs.png"
  rm -r "$tmp"
fi
