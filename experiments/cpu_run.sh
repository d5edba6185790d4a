#!/bin/sh
# One budgeted CPU run, trained (or resumed) and scored: train.py with the given flags in $RUNS/NAME,
# then valid (train.py's evaluation batch; a Transformer through its sliding window) and test (batch 1,
# the paper's protocol), with the log, the scores, the config and the metrics copied to $OUT.
#
#     sh experiments/cpu_run.sh NAME TRAIN_FLAGS...
#     sh experiments/cpu_run.sh awd-b40 --preset awd-lstm-cpu-2h --batch-size 40
#
# $RUNS: where the run directory goes (default ~/runs); $OUT: the record folder (default
# results/cpu-trials), which gets NAME-train.log, NAME-eval.log, NAME-valid.json, NAME-test.json,
# NAME-config.json and NAME-metrics.jsonl. Run with nothing else on the cores: the budget is the
# recipe's --max-minutes of wall clock. Stopped (Ctrl-C, SIGTERM): run the same command again; the
# run is resumed from its last.pt (the flags are then ignored: the run directory's config holds
# them) and a split that already has its JSON is not scored again. headline.sh runs this per preset.
set -e
if [ $# -lt 2 ]; then echo "error: sh experiments/cpu_run.sh NAME TRAIN_FLAGS..." >&2; exit 2; fi
name=$1
shift
cd "$(dirname "$0")/.."
run=${RUNS:-$HOME/runs}/$name
OUT=${OUT:-results/cpu-trials}
mkdir -p "$OUT"
if [ ! -f "$run/config.json" ] && [ -f "$OUT/$name-test.json" ]; then
  echo "$name: scored already ($OUT/$name-*), its run directory is gone; not trained again"
  exit 0
fi
if [ -f "$run/config.json" ]; then
  python train.py --resume "$run" >> "$OUT/$name-train.log" 2>&1
else
  python train.py "$@" --save "$run" > "$OUT/$name-train.log" 2>&1
fi
for split in valid test; do
  [ -f "$OUT/$name-$split.json" ] || python evaluate.py "$run" --split $split \
    --json "$OUT/$name-$split.json" >> "$OUT/$name-eval.log" 2>&1
done
cp "$run/metrics.jsonl" "$OUT/$name-metrics.jsonl"
cp "$run/config.json" "$OUT/$name-config.json"
