#!/bin/sh
# AWD-LSTM against the baseline at equal size and budget: both 2 layers of 200 units, tied
# (7,332,078 parameters), 20 minutes of training each on the full WikiText-2 training set, side by
# side on one core each so that both see the same machine; then each scored on valid (batch 10)
# and test (batch 1) on its own core. Record: results/h2h/.
#
#     sh experiments/h2h.sh
#
# Needs two free cores. Run directories go to $RUNS (default ~/runs), the logs, scores and
# metrics to $OUT (default results/h2h).
set -e
cd "$(dirname "$0")/.."
R=${RUNS:-$HOME/runs}
OUT=${OUT:-results/h2h}
mkdir -p "$R" "$OUT"
SIZE="--emsize 200 --nhid 200 --nlayers 2 --epochs 50 --max-minutes 20"
# shellcheck disable=SC2086  # SIZE is a word list
OMP_NUM_THREADS=1 taskset -c 0 python train.py --model lstm --dropout 0.2 --tied $SIZE \
  --save "$R/h2h-baseline" > "$OUT/baseline-train.log" 2>&1 &
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 taskset -c 1 python train.py --preset awd-lstm-wt2 $SIZE \
  --save "$R/h2h-awd" > "$OUT/awd-train.log" 2>&1 &
wait
for name in baseline awd; do
  core=$([ $name = baseline ] && echo 0 || echo 1)
  (for split in valid test; do
     OMP_NUM_THREADS=1 taskset -c "$core" python evaluate.py "$R/h2h-$name" --split $split \
       --json "$OUT/$name-$split.json"
   done > "$OUT/$name-eval.log" 2>&1; cp "$R/h2h-$name/metrics.jsonl" "$OUT/$name-metrics.jsonl") &
done
wait
