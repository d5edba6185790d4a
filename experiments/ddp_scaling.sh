#!/bin/sh
# One process against two (torchrun, gloo, one thread each) on a 2-core CPU: training tokens/s of
# lstm-small and the AWD-LSTM WT2 preset, two repeats each. WikiText-2's training split with a
# 200-line validation split, so that the per-epoch validation stays short; --max-batches caps
# the epoch. Record: results/ddp-scaling/.
#
#     sh experiments/ddp_scaling.sh      # prints and writes $OUT/results.txt (default results/ddp-scaling)
#
# Run from a clone with nothing else running; scratch data and runs go to $TMPDIR (default /tmp).
set -e
cd "$(dirname "$0")/.."
C=${TMPDIR:-/tmp}/wt2-shortval
mkdir -p $C
gunzip -c data/wikitext-2/train.txt.gz > $C/train.txt
gunzip -c data/wikitext-2/valid.txt.gz | head -200 > $C/valid.txt
gunzip -c data/wikitext-2/test.txt.gz | head -200 > $C/test.txt
OUT=${OUT:-results/ddp-scaling}
mkdir -p "$OUT"
SMALL="--model lstm --emsize 200 --nhid 200 --nlayers 2 --dropout 0.2 --no-tied --batch-size 20 --bptt 35 --max-batches 300"
AWD="--preset awd-lstm-wt2 --max-batches 16"
for rep in 1 2; do
  for cfg in small awd; do
    if [ $cfg = small ]; then F=$SMALL; else F=$AWD; fi
    R=$C/runs-$cfg-$rep; rm -rf $R
    OMP_NUM_THREADS=1 taskset -c 0 python train.py --data $C --epochs 1 $F --save $R-1 > /dev/null 2>&1
    python -m torch.distributed.run --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint localhost:29611 \
      train.py --data $C --epochs 1 $F --save $R-2 > /dev/null 2>&1
    for n in 1 2; do
      printf '%s %s processes=%s ' $cfg $rep $n
      python -c "import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(r['train_tokens_per_s'])" $R-$n/metrics.jsonl
    done
  done
done | tee $OUT/results.txt
