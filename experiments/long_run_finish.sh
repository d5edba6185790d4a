#!/bin/sh
# The long run's second stage, once experiments/long_run.sh has trained its 720 minutes:
# fine-tuning, then the better model scored on valid (batch 10, as in training) and test (batch 1,
# the paper's protocol). Record: results/long-run/.
#
#     sh experiments/long_run_finish.sh
#
# Fine-tuning (train.py --finetune: averaging from the first step; a model is saved only where it
# beats the one it starts from) gets one epoch on trial, first as NT-ASGD (SGD at lr 30, the
# default), then, if that epoch did not beat the start, as Adam at lr 3e-4. The first to beat it
# goes on to 60 minutes in all; if neither does, the long run's own model is scored.
# Run from a clone with nothing else running. Stopped: run the same command again; a fine-tuning
# run is resumed from its last.pt, a finished trial is not run again, and a split whose JSON
# exists is not scored again. Run directories in $RUNS (default ~/runs), records in $OUT (default
# results/long-run/attempt-2).
set -e
cd "$(dirname "$0")/.."
R=${RUNS:-$HOME/runs}
RUN=$R/awd-long
OUT=${OUT:-results/long-run/attempt-2}
mkdir -p "$OUT"
trial() {  # trial NAME FLAGS...: a one-epoch fine-tuning trial into $R/awd-long-NAME (run once); true if it beat the start
  dir=$R/awd-long-$1; shift
  log=$OUT/finetune-$(basename "$dir").log
  if [ ! -f "$dir/config.json" ]; then
    python train.py --finetune "$RUN" --save "$dir" --epochs 1 --max-minutes 60 --checkpoint-every 10 "$@" \
      >> "$log" 2>&1 || exit $?
  elif ! grep -q '"epoch": 1,' "$dir/metrics.jsonl" 2>/dev/null; then
    python train.py --resume "$dir" >> "$log" 2>&1 || exit $?
  fi
  [ -f "$dir/model.pt" ]
}
BEST=$RUN
if trial finetune; then
  BEST=$R/awd-long-finetune
elif trial finetune-adam --optimizer adam --lr 3e-4; then
  BEST=$R/awd-long-finetune-adam
fi
if [ "$BEST" != "$RUN" ]; then  # the winning trial goes on, to 60 minutes in all
  python train.py --resume "$BEST" --epochs 1000 >> "$OUT/finetune-$(basename "$BEST").log" 2>&1
fi
for dir in "$R"/awd-long-finetune*; do
  [ -f "$dir/metrics.jsonl" ] || continue
  cp "$dir/metrics.jsonl" "$OUT/$(basename "$dir")-metrics.jsonl"
  cp "$dir/config.json" "$OUT/$(basename "$dir")-config.json"
done
echo "$BEST" > "$OUT/scored-run.txt"
for split in valid test; do
  [ -f "$OUT/$split.json" ] || python evaluate.py "$BEST" --split $split --json "$OUT/$split.json" >> "$OUT/eval.log" 2>&1
done
