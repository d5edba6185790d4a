#!/bin/sh
# Issue 14's measurements for one trained WikiText-2 run: plain, cache, dynamic evaluation and both,
# on valid and test, all at batch 1 in fp32, each split's JSON (with its seconds) in results/eval-methods/NAME/.
# Both methods are tuned on valid first (tune.py) and the winner is applied once to test.
# A pass with the cache also scores the model without it (its JSON's "without_cache"), so dynamic
# evaluation with the cache gives dynamic evaluation alone too: on valid always, and on test when the two
# together beat dynamic evaluation alone on valid; otherwise test is scored by dynamic evaluation alone.
# TIME_DYNAMIC=1 then also times dynamic evaluation alone on test, which that shared pass cannot.
# A method that no tuned setting lets beat plain evaluation on valid is not scored (NAME.skipped says so),
# nor is the cache with the original gaps on corpora other than WikiText-2 and PTB.
# Run from the repository root with nothing else running (the times are part of the result).
#   sh results/eval-methods/run.sh ~/runs/awd-long awd-long
# Stopped: run the same command again; a step whose output exists is skipped, the gradient
# statistics are kept in ~/runs/NAME-ms.pt between steps, tune.py skips the settings it finished,
# and a dynamic-evaluation pass continues from its last save (~/runs/NAME-STEP-SPLIT.pass.pt, every 10 minutes).
set -e
RUN=$1
OUT=results/eval-methods/$2
MS=${RUNS:-$HOME/runs}/$2-ms.pt
mkdir -p "$OUT"
score() {  # score NAME SPLIT FLAGS...: one evaluate.py call, skipped when its JSON exists
  name=$1 split=$2; shift 2
  [ -f "$OUT/$name-$split.json" ] || python evaluate.py "$RUN" --split "$split" --batch-size 1 "$@" \
    --json "$OUT/$name-$split.json" >> "$OUT/$name-$split.log" 2>&1
}
kept() {  # kept NAME SPLIT: evaluate.py's flag that keeps a dynamic-evaluation pass across stops
  echo --dyn-checkpoint "${RUNS:-$HOME/runs}/$(basename "$OUT")-$1-$2.pass.pt"
}
best() {  # best METHOD: the winning flags from tune.py's table, as evaluate.py flags
  python -c "import json, sys; import tune; r = json.load(open('$OUT/tune-$1.json'))['rows'][0]; \
r = {k: v for k, v in r.items() if not k.startswith('val_')}; print(tune.method_flags('$1', r))"
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
[ -f "$OUT/tune-dynamic.json" ] || python tune.py "$RUN" --method dynamic --dyn-stats "$MS" --out "$OUT" \
  > "$OUT/tune-dynamic.log" 2>&1
if ! helps dynamic; then
  skip dynamic "no dynamic-evaluation setting beats plain evaluation on valid (tune-dynamic.md)"
elif ! helps cache; then
  for split in valid test; do score dynamic $split $(best dynamic) --dyn-stats "$MS" $(kept dynamic $split); done
else
  # Both together on valid, which is dynamic evaluation alone as well; on test, both together only where
  # they beat dynamic evaluation alone on valid.
  score both valid $(best cache) $(best dynamic) --dyn-stats "$MS" $(kept both valid)
  if python -c "import json, sys; r = json.load(open('$OUT/both-valid.json')); \
sys.exit(r['loss'] >= r['without_cache']['loss'])"; then
    score both test $(best cache) $(best dynamic) --dyn-stats "$MS" $(kept both test)
    [ -z "$TIME_DYNAMIC" ] || score dynamic test $(best dynamic) --dyn-stats "$MS" $(kept dynamic test)
  else
    skip both-test "both: not better than dynamic evaluation alone on valid; test not scored"
    score dynamic test $(best dynamic) --dyn-stats "$MS" $(kept dynamic test)
  fi
fi
