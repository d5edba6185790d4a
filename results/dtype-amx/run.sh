#!/usr/bin/env bash
# bf16 against fp32 at equal steps, two seeds per arm, reduced-size AWD-LSTM on WikiText-2, one core per run.
for seed in 1111 2222; do
  for dt in fp32 bf16; do core=$([ $dt = fp32 ] && echo 0 || echo 1)
    OMP_NUM_THREADS=1 taskset -c $core python train.py --model awd-lstm --data wikitext-2 \
        --emsize 128 --nhid 256 --nlayers 2 --batch-size 32 --epochs 5 --max-batches 100 --optimizer sgd \
        --schedule cosine --lr 30 --dtype $dt --seed $seed --save ~/runs/dtype-$dt-$seed \
        > results/dtype-amx/$dt-$seed-train.log 2>&1 &
  done; wait
done
