#!/bin/sh
# The long run's second stage, once its 720 minutes are done: fine-tuning (train.py --finetune:
# NT-ASGD averaging from the first step, at most 60 minutes; it saves a model only where it beats
# the one it starts from), then the better of the two scored on valid (batch 10, as in training)
# and on test (batch 1, the paper's protocol). Run from the repository root with nothing else running.
#   sh results/long-run/finish.sh                                  # the default fine-tuning
#   FINETUNE="--optimizer adam --lr 3e-4" sh results/long-run/finish.sh   # another one, same steps
# Stopped: run the same command again; fine-tuning is resumed from its last.pt, and a split whose
# JSON exists is not scored again.
set -e
RUN=${RUNS:-$HOME/runs}/awd-long
TUNED=$RUN-finetune
OUT=results/long-run
if [ -f "$TUNED/config.json" ]; then
  python train.py --resume "$TUNED" >> "$OUT/finetune.log" 2>&1
else
  # FINETUNE holds several flags, so it is not quoted
  python train.py --finetune "$RUN" --max-minutes 60 --checkpoint-every 10 $FINETUNE > "$OUT/finetune.log" 2>&1
fi
cp "$TUNED/metrics.jsonl" "$OUT/finetune-metrics.jsonl"
cp "$TUNED/config.json" "$OUT/finetune-config.json"
BEST=$RUN
[ -f "$TUNED/model.pt" ] && BEST=$TUNED  # written only where fine-tuning beat its start
for split in valid test; do
  [ -f "$OUT/$split.json" ] || python evaluate.py "$BEST" --split $split --json "$OUT/$split.json" >> "$OUT/eval.log" 2>&1
done
