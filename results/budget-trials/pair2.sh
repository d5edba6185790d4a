#!/bin/sh
# Pair 2 of the CPU-budget trials (issue 13): the baseline family, two recipes side by side, one
# core each, 30 minutes of training each (+ the final validation). Run from the repository root
# with nothing else running (pause the long run: Ctrl-C, resume after).
# A: LSTM 2x650 tied, dropout 0.5, SGD lr 20 with plateau annealing (Zaremba et al.'s medium, tied)
# B: the same with a one-cycle schedule over the budget and weight averaging over its last half
T=${TRIALS:-$HOME/runs/trials}
BASE="--model lstm --emsize 650 --nhid 650 --nlayers 2 --tied --dropout 0.5 --batch-size 20 --bptt 35 --max-minutes 30 --log-interval 100"
OMP_NUM_THREADS=1 taskset -c 0 python train.py $BASE --lr 20 \
  --save $T/p2-lstm650-sgd-plateau > results/budget-trials/p2-lstm650-sgd-plateau.log 2>&1 &
OMP_NUM_THREADS=1 taskset -c 1 python train.py $BASE --lr 20 --schedule onecycle --warmup 0.1 --average-start 0.5 \
  --save $T/p2-lstm650-sgd-onecycle-avg > results/budget-trials/p2-lstm650-sgd-onecycle-avg.log 2>&1 &
wait
