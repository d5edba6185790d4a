#!/bin/sh
# Pair 1 of the CPU-budget trials (issue 13): two AWD-LSTM recipes side by side, one core each,
# 30 minutes of training each (+ the final validation). Run from the repository root.
T=${TRIALS:-$HOME/runs/trials}
OMP_NUM_THREADS=1 taskset -c 0 python train.py --preset awd-lstm-adam --max-minutes 30 --log-interval 20 \
  --save $T/p1-awd-adam-onecycle > results/budget-trials/p1-awd-adam-onecycle.log 2>&1 &
OMP_NUM_THREADS=1 taskset -c 1 python train.py --preset awd-lstm-wt2 --average-start 0.5 --max-minutes 30 --log-interval 20 \
  --save $T/p1-awd-sgd-avg50 > results/budget-trials/p1-awd-sgd-avg50.log 2>&1 &
wait
