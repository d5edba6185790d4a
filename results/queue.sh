#!/bin/sh
# What the open issues still need from this CPU, in order, each step skipped or continued where an
# earlier session left it, so that every session starts it again with one command:
#   (sh results/queue.sh >> ~/runs/queue.log 2>&1 &)
# 1. the long AWD-LSTM run to its 720 minutes (issue 13), 2. its fine-tuning and scores
# (long-run/finish.sh), 3. issue 14's methods on it (eval-methods/run.sh), 4. the two 2-hour
# headline runs (headline/run.sh), 5. issue 14's methods on those.
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
step "long run"
python train.py --resume "$R/awd-long" >> "$R/awd-long.log" 2>&1
step "long run: fine-tuning and scores"
sh results/long-run/finish.sh
LONG=$(cat results/long-run/scored-run.txt)  # written by finish.sh: the fine-tuned model where it won
step "eval-methods on $LONG"
sh results/eval-methods/run.sh "$LONG" awd-long
step "headline runs"
sh results/headline/run.sh
for preset in awd-lstm-cpu-2h lstm-cpu-2h; do
  step "eval-methods on $preset"
  sh results/eval-methods/run.sh "$R/$preset" "$preset"
done
step "done"
