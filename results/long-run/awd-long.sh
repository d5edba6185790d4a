#!/bin/sh
# The long AWD-LSTM run of issue 13: the fast.ai one-cycle Adam recipe (preset awd-lstm-adam), its
# schedule stretched over 720 minutes of training on both cores. Start: sh results/long-run/awd-long.sh
# Resume after a stop: sh results/long-run/awd-long.sh resume   (refused while one is running)
# Pause it: sh results/long-run/awd-long.sh pause   (Ctrl-C, then wait until it has saved and exited: at an
# epoch's end it validates first, which takes minutes)
R=${RUNS:-$HOME/runs}
RUN="$R/awd-long"
PATTERN="train.py --resume $RUN"
cd "$(dirname "$0")/../.."
mkdir -p "$R"
case "$1" in
  pause)
    # A process started in the background by a script ignores Ctrl-C until train.py installs its
    # handler, a few seconds in: wait until each one is 30 s old, so the signal is not lost.
    for pid in $(pgrep -f "$PATTERN"); do
      while age=$(ps -o etimes= -p "$pid") && [ "$age" -lt 30 ]; do sleep 1; done
    done
    pkill -INT -f "$PATTERN"
    for i in $(seq 1 600); do pgrep -f "$PATTERN" > /dev/null || exit 0; sleep 1; done
    echo "still running after 10 minutes"; exit 1 ;;
  resume)
    if pgrep -f "$PATTERN" > /dev/null; then echo "already running"; exit 1; fi
    exec python train.py --resume "$RUN" >> "$R/awd-long.log" 2>&1 ;;
esac
exec python train.py --preset awd-lstm-adam --max-minutes 720 --checkpoint-every 10 --log-interval 50 \
  --save "$RUN" >> "$R/awd-long.log" 2>&1
