#!/bin/sh
# The long AWD-LSTM run on a CPU: the fast.ai one-cycle Adam recipe (preset awd-lstm-adam), its
# schedule stretched over 720 minutes of training on both cores, last.pt every 10 minutes; then
# experiments/long_run_finish.sh fine-tunes and scores it. Record: results/long-run/.
#
#     sh experiments/long_run.sh      # starts the run, or resumes it where it stopped
#
# Stop it with Ctrl-C (or SIGTERM to the pid in $RUNS/awd-long/train.lock): train.py finishes the
# batch, saves last.pt and exits; the same command then resumes it. A second train.py into the
# same run directory is refused, so the command cannot start the run twice. It needs a machine
# that keeps its run directory for about 13 hours of training. The run directory is
# $RUNS/awd-long (default ~/runs/awd-long); the log, config and metrics go to $OUT (default
# results/long-run/attempt-2).
set -e
cd "$(dirname "$0")/.."
R=${RUNS:-$HOME/runs}
RUN=$R/awd-long
OUT=${OUT:-results/long-run/attempt-2}
mkdir -p "$R" "$OUT"
status=0
if [ -f "$RUN/config.json" ]; then
  python train.py --resume "$RUN" >> "$OUT/train.log" 2>&1 || status=$?
else
  python train.py --preset awd-lstm-adam --max-minutes 720 --checkpoint-every 10 --log-interval 50 \
    --save "$RUN" >> "$OUT/train.log" 2>&1 || status=$?
fi
cp "$RUN/config.json" "$OUT/config.json"
[ ! -f "$RUN/metrics.jsonl" ] || cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl"
exit $status
