#!/usr/bin/env bash
# The GPU numbers in one command, for a user with one GPU:
#
#     experiments/gpu_reproduce.sh [--profile] MINUTES OUTDIR        # e.g. 15 out/gpu-run
#
# Finishes within MINUTES + 3 minutes. Each step has a deadline (timeout), and none may run past
# the end of the budget, so a late step never costs the earlier ones: their results are already in
# OUTDIR, rewritten after every step. The steps: the GPU, torch, CUDA and cuDNN versions;
# `pytest -m cuda`; bench.py, ours against a plain nn.LSTM model, bf16 and fp32; the awd-lstm-gpu
# preset and the QRNN's qrnn-gpu, each trained for half of MINUTES - 3 minutes (the same budget, so
# the two rows are a head-to-head); WikiText-2 test at batch 1, plain and with the cache, for both;
# for AWD-LSTM also with dynamic evaluation (its statistics capped at DYN_STAT_BATCHES segments; it
# gets the time left, and a pass that runs out reports the perplexity of the text it scored); a
# sample; with --profile (or PROFILE=1), a few training batches under torch.profiler
# (experiments.gpu_profile).
# OUTDIR (new or empty) gets summary.md, summary.json, logs.tar.gz (every log) and, with
# --profile, profile.txt. The run directory (weights) stays in WORK (default: a new temporary
# folder), printed at the start. A failing step's exit status is recorded and the script goes on.
#
# Environment, to change what runs (the tests shrink it to seconds on a CPU): PY (python3), DEVICE
# (cuda), PRESET (awd-lstm-gpu), QRNN_PRESET (qrnn-gpu), QRNN_MINUTES (its training minutes, half
# of MINUTES - 3 by default, the rest going to PRESET; 0 leaves the QRNN out), TRAIN_ARGS (more
# train.py flags, for both), CACHE_ARGS (evaluate.py's cache
# flags; WikiText-2 has defaults), BENCH_ARGS, PYTEST_ARGS, DYN_STAT_BATCHES (1000), PROMPT (the
# sample's, "the meaning of"), WORK, and the
# deadlines in seconds: CAP_VERSIONS (30), CAP_TESTS (90), CAP_BENCH (60), CAP_TRAIN_EXTRA (60,
# beyond the training budget: start-up, last validation, saving), CAP_SCORE (45, each test pass),
# CAP_SAMPLE (30), CAP_PROFILE (60), RESERVE (20: kept at the end for the summary).
set -u

die() { echo "error: $*" >&2; exit 2; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
PROFILE=${PROFILE:-0}
if [ "${1:-}" = "--profile" ]; then PROFILE=1; shift; fi
[ $# -eq 2 ] || die "usage: experiments/gpu_reproduce.sh [--profile] MINUTES OUTDIR (MINUTES > 3, e.g. 15)"
MINUTES=$1
awk -v m="$MINUTES" 'BEGIN { exit !(m ~ /^[0-9]*\.?[0-9]+$/ && m > 3) }' \
    || die "MINUTES must be a number above 3 (3 minutes go to everything but training), got '$MINUTES'"
QRNN_PRESET=${QRNN_PRESET:-qrnn-gpu}
QRNN_MINUTES=${QRNN_MINUTES:-$(awk -v m="$MINUTES" 'BEGIN { print (m - 3) / 2 }')}
awk -v q="$QRNN_MINUTES" -v m="$MINUTES" 'BEGIN { exit !(q ~ /^[0-9]*\.?[0-9]+$/ && q < m - 3) }' \
    || die "QRNN_MINUTES must be a number from 0 to below MINUTES - 3, got '$QRNN_MINUTES'"
mkdir -p "$2" 2>/dev/null || die "cannot create OUTDIR $2"
OUT=$(cd "$2" && pwd)
[ -z "$(ls -A "$OUT")" ] || die "OUTDIR $OUT is not empty; give a new folder"
cd "$(dirname "$0")/.." || die "cannot find the repository"

PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; PRESET=${PRESET:-awd-lstm-gpu}
TRAIN_ARGS=${TRAIN_ARGS:-}; CACHE_ARGS=${CACHE_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:---config awd-lstm-wt2 --dtype bf16 fp32}; PYTEST_ARGS=${PYTEST_ARGS:--m cuda -q}
DYN_STAT_BATCHES=${DYN_STAT_BATCHES:-1000}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-reproduce.XXXXXX")}
RESERVE=${RESERVE:-20}
T0=$(date +%s)
END=$(awk -v t="$T0" -v m="$MINUTES" 'BEGIN { printf "%d", t + (m + 3) * 60 }')
TRAIN_MINUTES=$(awk -v m="$MINUTES" -v q="$QRNN_MINUTES" 'BEGIN { print m - 3 - q }')
LOGS=$WORK/logs; RUN=$WORK/run
mkdir -p "$LOGS" || die "cannot create $LOGS"
export PYTHONUNBUFFERED=1
echo "gpu_reproduce: $MINUTES minutes, training $PRESET $TRAIN_MINUTES and $QRNN_PRESET $QRNN_MINUTES; logs and run directory in $WORK; results in $OUT"

report() {  # the summary and the archive, as they stand
    local pass=()
    [ -f "$WORK/dyn-pass.pt" ] && pass=(--dyn-pass "$WORK/dyn-pass.pt")
    $PY -m experiments.gpu_summary "$LOGS" "$OUT" "${pass[@]}" >> "$LOGS/summary.log" 2>&1 \
        || echo "warning: the summary failed (logs/summary.log)" >&2
    [ -f "$LOGS/profile.txt" ] && cp "$LOGS/profile.txt" "$OUT/profile.txt"
    tar -czf "$OUT/logs.tar.gz.tmp" -C "$WORK" logs && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

CHILD=
stop() {  # Ctrl-C or SIGTERM: end the step under way, keep what is done
    [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null && wait "$CHILD"
    echo "stopped; results so far in $OUT" >&2
    report
    exit 130
}
trap stop INT TERM

step() {  # step NAME DEADLINE LOG COMMAND...: COMMAND under min(DEADLINE, the time left), output in LOG
    local name=$1 own=$2 log=$3 t rc
    shift 3
    local cap=$(( END - RESERVE - $(date +%s) ))
    [ "$own" -lt "$cap" ] && cap=$own
    t=$(date +%s)
    if [ "$cap" -lt 1 ]; then
        rc=124; cap=0; echo "no time left" > "$LOGS/$log"
    else
        timeout -k 10 "$cap" "$@" > "$LOGS/$log" 2>&1 &
        CHILD=$!
        wait "$CHILD"; rc=$?
        CHILD=
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t ))" "$cap" >> "$LOGS/steps.tsv"
    echo "[$(( $(date +%s) - T0 ))s] $name: exit $rc ($LOGS/$log)"
    report
}

VERSIONS='import platform, shutil, subprocess, torch
gpu = torch.cuda.is_available()
print("torch:", torch.__version__)
print("CUDA:", torch.version.cuda, "| available:", gpu)
print("cuDNN:", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
for i in range(torch.cuda.device_count()):
    print(f"GPU {i}:", torch.cuda.get_device_name(i), "| capability", torch.cuda.get_device_capability(i))
if shutil.which("nvidia-smi"):
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                         text=True)
    print("driver:", smi.stdout.strip().replace("\n", ", "))
print("python:", platform.python_version(), "| host:", platform.node(), "| cpus:", torch.get_num_threads())
git = shutil.which("git") and subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                            text=True)
print("commit:", git and git.stdout.strip() or "unknown")'
step versions "${CAP_VERSIONS:-30}" versions.txt $PY -c "$VERSIONS"
cat "$LOGS/versions.txt"
step tests "${CAP_TESTS:-90}" tests.log $PY -m pytest $PYTEST_ARGS -p no:cacheprovider
# shellcheck disable=SC2086  # the *_ARGS variables are word lists
step bench "${CAP_BENCH:-60}" bench.log $PY bench.py $BENCH_ARGS --device "$DEVICE" --json "$LOGS/bench.json"
train_and_test() {  # train_and_test PREFIX PRESET MINUTES RUN: one model's training and test rows
    local cap
    cap=$(awk -v m="$3" -v x="${CAP_TRAIN_EXTRA:-60}" 'BEGIN { printf "%d", m * 60 + x }')
    step "${1}train" "$cap" "${1}train.log" $PY train.py --preset "$2" --max-minutes "$3" --device "$DEVICE" \
        --save "$4" $TRAIN_ARGS
    cp "$4/metrics.jsonl" "$LOGS/${1}metrics.jsonl" 2>/dev/null
    cp "$4/config.json" "$LOGS/${1}config.json" 2>/dev/null
    step "${1}test" "${CAP_SCORE:-45}" "${1}test.log" $PY evaluate.py "$4" --split test --device "$DEVICE" \
        --json "$LOGS/${1}test.json"
    step "${1}test-cache" "${CAP_SCORE:-45}" "${1}test-cache.log" $PY evaluate.py "$4" --split test --cache \
        $CACHE_ARGS --device "$DEVICE" --json "$LOGS/${1}test-cache.json"
}
train_and_test "" "$PRESET" "$TRAIN_MINUTES" "$RUN"
awk -v q="$QRNN_MINUTES" 'BEGIN { exit !(q > 0) }' && train_and_test qrnn- "$QRNN_PRESET" "$QRNN_MINUTES" "$WORK/qrnn-run"
step sample "${CAP_SAMPLE:-30}" sample.log $PY generate.py "$RUN" --device "$DEVICE" --temperature 0.8 --words 80 \
    --seed 1 --prompt "${PROMPT:-the meaning of}"
if [ "$PROFILE" = 1 ]; then
    step profile "${CAP_PROFILE:-60}" profile.log $PY -m experiments.gpu_profile --out "$LOGS/profile.txt" \
        --json "$LOGS/profile.json" -- --preset "$PRESET" --device "$DEVICE" --save "$WORK/profile-run" $TRAIN_ARGS
fi
# Dynamic evaluation gets the rest; stopped by its deadline, it saves its pass (SIGTERM), which
# the summary reads.
step test-dynamic 100000 test-dynamic.log $PY evaluate.py "$RUN" --split test --dynamic-eval \
    --dyn-stat-batches "$DYN_STAT_BATCHES" --dyn-checkpoint "$WORK/dyn-pass.pt" --dyn-checkpoint-every 1 \
    --device "$DEVICE" --json "$LOGS/test-dynamic.json"
echo "done in $(( $(date +%s) - T0 ))s: $OUT/summary.md"
