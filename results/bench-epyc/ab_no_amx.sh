#!/bin/sh
# Issue 12's "on a machine without AMX, nothing gets slower than today": bench.py of the commit the
# issue was filed against (b65d353) and of the working tree, alternated, twice each, in bf16 (the
# default dtype on a CPU with AVX512-BF16) on real WikiText-2 batches, with the machine otherwise quiet.
#   git worktree add /tmp/ab-old b65d353 && sh results/bench-epyc/ab_no_amx.sh
set -e
cd "$(dirname "$0")/../.."
OUT=results/bench-epyc
DATA=/work/shared/data/wikitext-2
for round in 1 2; do
  for side in old new; do
    dir=$([ $side = old ] && echo /tmp/ab-old || echo .)
    (cd $dir && python bench.py --config awd-lstm-wt2 --dtype bf16 --data $DATA --steps 8 --windows 3 --warmup 2 \
      --eval-steps 2 --json "$OLDPWD/$OUT/ab-awd-lstm-wt2-$side-$round.json") >> $OUT/ab-awd-lstm-wt2.log 2>&1
    (cd $dir && python bench.py --config lstm-650-tied --dtype bf16 --data $DATA --steps 10 --windows 3 --warmup 3 \
      --eval-steps 2 --json "$OLDPWD/$OUT/ab-lstm-650-tied-$side-$round.json") >> $OUT/ab-lstm-650-tied.log 2>&1
  done
done
