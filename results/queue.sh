#!/bin/sh
# What the open issues still need from this CPU, in order, each step skipped or continued where an
# earlier session left it, so that every session starts it again with one command:
#   (sh results/queue.sh >> ~/runs/queue.log 2>&1 &)
# 1. the two 2-hour headline runs (headline/run.sh, issue 13; a preset already scored is not trained
# again), 2. issue 14's methods on each 2-hour run whose run directory is still here
# (eval-methods/run.sh). The long AWD-LSTM run is no longer queued: a run directory has been lost at
# every session boundary since 2026-12-02, and it needs about six sessions in a row
# (long-run/README.md says how to run it where a run directory is kept).
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
for name in awd-lstm-cpu-2h lstm-cpu-2h; do
  if [ -f "$R/$name/model.pt" ]; then
    step "eval-methods on $name"
    sh results/eval-methods/run.sh "$R/$name" $name
  else
    step "eval-methods on $name: skipped, $R/$name is gone"
  fi
done
step "done"
