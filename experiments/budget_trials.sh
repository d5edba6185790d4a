#!/bin/sh
# The CPU-budget trials: a pair of recipes trained side by side, one core each, 30 minutes of
# training each (+ the final validation), then the pair's table. Record: results/budget-trials/.
#
#     sh experiments/budget_trials.sh 1    # AWD-LSTM: Adam one-cycle against NT-ASGD averaging over the second half
#     sh experiments/budget_trials.sh 2    # LSTM 2x650 tied: plateau annealing against one-cycle with averaging
#     sh experiments/budget_trials.sh 3    # pair 1's winner with every dropout at half and at a quarter of the paper's
#
# Run from a clone on a machine with two free cores (taskset pins each trial to one). Run
# directories go to $TRIALS (default ~/runs/trials); logs, configs and metrics to $OUT (default
# results/budget-trials), and the pair's table to $OUT/pairN.md (python -m experiments.trials_table).
set -e
cd "$(dirname "$0")/.."
T=${TRIALS:-$HOME/runs/trials}
OUT=${OUT:-results/budget-trials}
case "${1:-}" in
  1) A=p1-awd-adam-onecycle; FA="--preset awd-lstm-adam --log-interval 20"
     B=p1-awd-sgd-avg50; FB="--preset awd-lstm-wt2 --average-start 0.5 --log-interval 20" ;;
  2) LSTM="--model lstm --emsize 650 --nhid 650 --nlayers 2 --tied --dropout 0.5 --batch-size 20 --bptt 35 --lr 20 --log-interval 100"
     A=p2-lstm650-sgd-plateau; FA="$LSTM"
     B=p2-lstm650-sgd-onecycle-avg; FB="$LSTM --schedule onecycle --warmup 0.1 --average-start 0.5" ;;
  3) A=p3-awd-adam-dropout-half; FA="--preset awd-lstm-adam --log-interval 20 --dropout-embedding 0.05 \
--dropout-input 0.325 --dropout-hidden 0.1 --dropout-output 0.2 --dropout-weight 0.25"
     B=p3-awd-adam-dropout-quarter; FB="--preset awd-lstm-adam --log-interval 20 --dropout-embedding 0.025 \
--dropout-input 0.1625 --dropout-hidden 0.05 --dropout-output 0.1 --dropout-weight 0.125" ;;
  *) echo "error: which pair? sh experiments/budget_trials.sh 1|2|3" >&2; exit 2 ;;
esac
mkdir -p "$T" "$OUT"
# shellcheck disable=SC2086  # the flags are word lists
OMP_NUM_THREADS=1 taskset -c 0 python train.py $FA --max-minutes 30 --save "$T/$A" > "$OUT/$A.log" 2>&1 &
OMP_NUM_THREADS=1 taskset -c 1 python train.py $FB --max-minutes 30 --save "$T/$B" > "$OUT/$B.log" 2>&1 &
wait
for trial in $A $B; do
  cp "$T/$trial/config.json" "$OUT/$trial-config.json"
  cp "$T/$trial/metrics.jsonl" "$OUT/$trial-metrics.jsonl"
done
python -m experiments.trials_table "$OUT/$A" "$OUT/$B" > "$OUT/pair$1.md"
