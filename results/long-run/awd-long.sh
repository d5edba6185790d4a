#!/bin/sh
# The long AWD-LSTM run of issue 13: the fast.ai one-cycle Adam recipe (preset awd-lstm-adam), its
# schedule stretched over 720 minutes of training on both cores. Start: sh ~/runs/awd-long.sh
# Resume after a stop: sh ~/runs/awd-long.sh resume
cd /work/main
if [ "$1" = resume ]; then
  exec python train.py --resume ~/runs/awd-long >> ~/runs/awd-long.log 2>&1
fi
exec python train.py --preset awd-lstm-adam --max-minutes 720 --checkpoint-every 10 --log-interval 50 \
  --save ~/runs/awd-long >> ~/runs/awd-long.log 2>&1
