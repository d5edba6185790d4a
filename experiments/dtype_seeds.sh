#!/bin/sh
# bf16 against fp32 at equal steps, two seeds per arm: a reduced-size AWD-LSTM on the bundled
# WikiText-2 (2 layers, emsize 128, nhid 256, batch 32, the first 100 batches of each epoch, SGD
# lr 30 with a cosine schedule over 5 epochs), fp32 on core 0 and bf16 on core 1 side by side,
# seed 1111 then seed 2222. Validation runs in fp32 in both arms. Record: results/dtype-amx/.
#
#     sh experiments/dtype_seeds.sh
#
# Needs a CPU with bf16 matmuls (AVX512-BF16 or AMX) and two free cores. Run directories go to
# $RUNS (default ~/runs), the logs and metrics to $OUT (default results/dtype-amx).
set -e
cd "$(dirname "$0")/.."
R=${RUNS:-$HOME/runs}
OUT=${OUT:-results/dtype-amx}
mkdir -p "$R" "$OUT"
for seed in 1111 2222; do
  for dt in fp32 bf16; do
    core=$([ $dt = fp32 ] && echo 0 || echo 1)
    OMP_NUM_THREADS=1 taskset -c "$core" python train.py --model awd-lstm --data wikitext-2 \
      --emsize 128 --nhid 256 --nlayers 2 --batch-size 32 --epochs 5 --max-batches 100 --optimizer sgd \
      --schedule cosine --lr 30 --dtype $dt --seed $seed --save "$R/dtype-$dt-$seed" \
      > "$OUT/$dt-$seed-train.log" 2>&1 &
  done
  wait
  for dt in fp32 bf16; do cp "$R/dtype-$dt-$seed/metrics.jsonl" "$OUT/$dt-$seed-metrics.jsonl"; done
done
