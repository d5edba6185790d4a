#!/bin/sh
# What the open issues still need from this CPU, in order, each step skipped or continued where an
# earlier session left it, so that every session starts it again with one command:
#   (sh results/queue.sh >> ~/runs/queue.log 2>&1 &)
# 1. the two 2-hour headline runs (headline/run.sh, issue 13), 2. issue 14's methods on the 2-hour
# AWD-LSTM (eval-methods/run.sh), 3. the long AWD-LSTM run to its 720 minutes (started afresh where
# ~/runs/awd-long is missing), its fine-tuning and scores (long-run/finish.sh) and issue 14's methods
# on it, 4. issue 14's methods on the 2-hour baseline. The steps that fit in one session come first:
# a run directory is lost when a session opens on a replaced machine.
# Stop it with: pkill -TERM -f "python (train|evaluate|tune).py". train.py and a kept dynamic-evaluation
# pass save and exit 130; anything else just ends (tune.py keeps the settings it finished; a plain pass
# runs again); either way the queue ends. SIGTERM, not Ctrl-C's SIGINT: a process started in the
# background by a script ignores SIGINT until it installs a handler, and some steps never do.
# Each step's own log is where its script puts it.
set -e
cd "$(dirname "$0")/.."
R=${RUNS:-$HOME/runs}
if pgrep -f "python (train|evaluate|tune).py" > /dev/null; then
  echo "refused: a train.py, evaluate.py or tune.py is running (pgrep -af python)"; exit 1
fi
step() { echo "$(date '+%F %T') $*"; }
step "headline runs"
sh results/headline/run.sh
step "eval-methods on awd-lstm-cpu-2h"
sh results/eval-methods/run.sh "$R/awd-lstm-cpu-2h" awd-lstm-cpu-2h
step "long run"
if [ -f "$R/awd-long/config.json" ]; then sh results/long-run/awd-long.sh resume; else sh results/long-run/awd-long.sh; fi
step "long run: fine-tuning and scores"
sh results/long-run/finish.sh
LONG=$(cat results/long-run/scored-run.txt)  # written by finish.sh: the fine-tuned model where it won
step "eval-methods on $LONG"
sh results/eval-methods/run.sh "$LONG" awd-long
step "eval-methods on lstm-cpu-2h"
sh results/eval-methods/run.sh "$R/lstm-cpu-2h" lstm-cpu-2h
step "done"
