#!/bin/sh
# Pair 3 of the CPU-budget trials (issue 13): pair 1's winner (preset awd-lstm-adam) with its
# dropouts scaled to the short budget, side by side, one core each, 30 minutes of training each
# (+ the final validation). Run from the repository root with nothing else running.
# A: every dropout at half the paper's (embedding 0.05, input 0.325, hidden 0.1, output 0.2, weight 0.25)
# B: at a quarter (0.025, 0.1625, 0.05, 0.1, 0.125)
T=${TRIALS:-$HOME/runs/trials}
BASE="--preset awd-lstm-adam --max-minutes 30 --log-interval 20"
OMP_NUM_THREADS=1 taskset -c 0 python train.py $BASE --dropout-embedding 0.05 --dropout-input 0.325 \
  --dropout-hidden 0.1 --dropout-output 0.2 --dropout-weight 0.25 \
  --save $T/p3-awd-adam-dropout-half > results/budget-trials/p3-awd-adam-dropout-half.log 2>&1 &
OMP_NUM_THREADS=1 taskset -c 1 python train.py $BASE --dropout-embedding 0.025 --dropout-input 0.1625 \
  --dropout-hidden 0.05 --dropout-output 0.1 --dropout-weight 0.125 \
  --save $T/p3-awd-adam-dropout-quarter > results/budget-trials/p3-awd-adam-dropout-quarter.log 2>&1 &
wait
