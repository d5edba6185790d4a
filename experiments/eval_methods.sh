#!/bin/sh
# The evaluation-time methods on one trained WikiText-2 run: plain, cache, dynamic evaluation and
# both, on valid and test, all at batch 1 in fp32, each split's JSON (with its seconds) in $OUT/NAME
# (default results/eval-methods/NAME). Record: results/eval-methods/.
#
#     sh experiments/eval_methods.sh RUN NAME      # e.g. ~/runs/lstm-cpu-2h lstm-cpu-2h
#     python -m experiments.eval_methods_table results/eval-methods/NAME > results/eval-methods/NAME/table.md
#
# Both methods are tuned on valid first (tune.py) and the winner is applied once to test.
# A pass with the cache also scores the model without it (its JSON's "without_cache"), so one pass of
# dynamic evaluation with the cache gives dynamic evaluation alone too, on each split; test runs first, so
# that a stop keeps the pass the targets read. Valid says which of the two is better.
# TIME_DYNAMIC=1 then also times dynamic evaluation alone on test, which that shared pass cannot.
# DYN_STAT_BATCHES=N caps the gradient statistics at N training segments (default: all of train), and
# DYN_TUNE_TOKENS=N tunes dynamic evaluation on the first N tokens of valid (default: tune.py's 30,000).
# A method that no tuned setting lets beat plain evaluation on valid is not scored (NAME.skipped says so),
# nor is the cache with the original gaps on corpora other than WikiText-2 and PTB.
# Run from a clone with nothing else running (the times are part of the result).
# Stopped: run the same command again; a step whose output exists is skipped, the gradient
# statistics are kept in $RUNS/NAME-ms.pt (default ~/runs) between steps, tune.py skips the settings
# it finished, and a dynamic-evaluation pass continues from its last save
# ($RUNS/NAME-STEP-SPLIT.pass.pt, every 10 minutes).
set -e
if [ $# -ne 2 ]; then echo "error: sh experiments/eval_methods.sh RUN NAME" >&2; exit 2; fi
RUN=$(cd "$1" && pwd) || { echo "error: no run directory $1" >&2; exit 2; }
cd "$(dirname "$0")/.."
OUT=${OUT:-results/eval-methods}/$2
MS=${RUNS:-$HOME/runs}/$2-ms.pt
STATS="--dyn-stats $MS${DYN_STAT_BATCHES:+ --dyn-stat-batches $DYN_STAT_BATCHES}"
mkdir -p "$OUT"
score() {  # score NAME SPLIT FLAGS...: one evaluate.py call, skipped when its JSON exists
  name=$1 split=$2; shift 2
  [ -f "$OUT/$name-$split.json" ] || python evaluate.py "$RUN" --split "$split" --batch-size 1 "$@" \
    --json "$OUT/$name-$split.json" >> "$OUT/$name-$split.log" 2>&1
}
kept() {  # kept NAME SPLIT: evaluate.py's flag that keeps a dynamic-evaluation pass across stops
  echo --dyn-checkpoint "${RUNS:-$HOME/runs}/$(basename "$OUT")-$1-$2.pass.pt"
}
best() {  # best METHOD: the winning setting in tune.py's table (its first row), as evaluate.py flags
  python -c "import json; r = json.load(open('$OUT/tune-$1.json'))['rows'][0]; \
print(f\"--cache --cache-window {r['window']} --cache-theta {r['theta']:g} --cache-lambda {r['lam']:g}\" \
if '$1' == 'cache' else f\"--dynamic-eval --dyn-lr {r['lr']:.4g} --dyn-lambda {r['lam']:.4g}\")"
}
helps() {  # helps METHOD: whether tune.py found a setting that beats plain evaluation on valid
  python -c "import json, sys; r = json.load(open('$OUT/tune-$1.json'))['rows'][0]; \
sys.exit(not any(v for k, v in r.items() if not k.startswith('val_')))"
}
skip() {  # skip NAME WHY: record that a step was not run, and why
  echo "$2" > "$OUT/$1.skipped"
}
for split in valid test; do score plain $split; done
[ -f "$OUT/tune-cache.json" ] || python tune.py "$RUN" --method cache --out "$OUT" > "$OUT/tune-cache.log" 2>&1
if helps cache; then
  for split in valid test; do score cache $split $(best cache); done
  # Once, for comparison: the same cache with the original pointer.py's gaps (no cache for the first window
  # targets, nor for the first target of each of its 2,000-token chunks), known for WikiText-2 and PTB.
  corpus=$(python -c "import json; from data import corpus_name; print(corpus_name(json.load(open('$RUN/config.json'))['data']))")
  case $corpus in
    wikitext-2|ptb) score cache-gaps test $(best cache) --cache-original-gaps ;;
    *) skip cache-gaps "the original pointer.py's evaluation chunk is known for wikitext-2 and ptb, not $corpus" ;;
  esac
else
  skip cache "no cache setting beats plain evaluation on valid (tune-cache.md)"
fi
[ -f "$OUT/tune-dynamic.json" ] || python tune.py "$RUN" --method dynamic $STATS --out "$OUT" \
  ${DYN_TUNE_TOKENS:+--tokens $DYN_TUNE_TOKENS} > "$OUT/tune-dynamic.log" 2>&1
if ! helps dynamic; then
  skip dynamic "no dynamic-evaluation setting beats plain evaluation on valid (tune-dynamic.md)"
elif ! helps cache; then
  for split in test valid; do score dynamic $split $(best dynamic) $STATS $(kept dynamic $split); done
else
  for split in test valid; do score both $split $(best cache) $(best dynamic) $STATS $(kept both $split); done
  [ -z "$TIME_DYNAMIC" ] || score dynamic test $(best dynamic) $STATS $(kept dynamic test)
fi
