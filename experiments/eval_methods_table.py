"""The table of the evaluation-time methods on one or more runs, from the JSON files that
experiments/eval_methods.sh leaves in results/eval-methods/NAME/: perplexity on valid and test for
each method, the change against plain evaluation, and the time of each test pass.

    python -m experiments.eval_methods_table results/eval-methods/lstm-cpu-2h > table.md

Dynamic evaluation alone comes from its own pass where there is one, else from the pass with the
cache ("without_cache", the same numbers bit for bit); that pass's time also holds the cache's, so
it is marked as an upper bound. Times leave out the gradient statistics (given apart); a pass that was
stopped and continued (evaluate.py --dyn-checkpoint) is marked "in pieces": its time is the sum of
its processes' times up to their last saves, possibly on different days. cache-gaps is
the cache with the original pointer.py's gaps (evaluate.py --cache-original-gaps), on test only.
"""
import argparse
import json
from pathlib import Path

from lm import cli


def load(folder, name, split):
    path = folder / f"{name}-{split}.json"
    return json.loads(path.read_text()) if path.exists() else None


def method_result(folder, method, split):
    """(ppl, seconds of the pass less the statistics, whether the time is only an upper bound, whether
    the pass ran in pieces), or None."""
    r = load(folder, method, split)
    shared = r is None and method == "dynamic"
    if shared:
        r = load(folder, "both", split)
    if r is None or (shared and "without_cache" not in r):
        return None
    ppl = r["without_cache"]["ppl"] if shared else r["ppl"]
    stats = r.get("dynamic_eval", {}).get("stat_seconds", 0.0)
    pieces = r.get("dynamic_eval", {}).get("continued_from_segment") is not None
    return ppl, r["seconds"] - stats, shared, pieces


def settings(folder):
    parts = []
    for method in ("cache", "dynamic"):
        path = folder / f"tune-{method}.json"
        if path.exists():
            best = {k: v for k, v in json.loads(path.read_text())["rows"][0].items() if not k.startswith("val_")}
            tuned = ", ".join(f"{k} {v:.4g}" for k, v in best.items()) if any(best.values()) else (
                "no setting beats plain evaluation on valid")
            parts.append(f"{method}: {tuned}")
    return "; ".join(parts)


def get_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="results/eval-methods/NAME folders, one table row group each")
    return parser


@cli.user_errors
def main(argv=None):
    folders = get_parser().parse_args(argv).folders
    for folder in folders:
        if not Path(folder).is_dir():
            raise cli.UserError(f"{folder} is not a folder")
    print("| run | method | val ppl | test ppl | test vs plain | test pass | time vs plain |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for folder in map(Path, folders):
        plain = method_result(folder, "plain", "test")
        for method in ("plain", "cache", "cache-gaps", "dynamic", "both"):
            valid, test = method_result(folder, method, "valid"), method_result(folder, method, "test")
            if valid is None and test is None:
                continue
            cells = [f"{valid[0]:.2f}" if valid else "", f"{test[0]:.2f}" if test else ""]
            if test and plain:
                bound = "<= " if test[2] else ""
                pieces = " (in pieces)" if test[3] else ""
                cells += [f"{test[0] / plain[0] - 1:+.1%}", f"{bound}{test[1] / 60:.1f} min{pieces}",
                          f"{bound}{test[1] / plain[1]:.2f}x"]
            else:
                cells += ["", "", ""]
            print(f"| {folder.name} | {method} | " + " | ".join(cells) + " |")
        note = settings(folder)
        tuned = folder / "tune-dynamic.json"
        stat_seconds = json.loads(tuned.read_text()).get("stat_seconds") if tuned.exists() else None
        if stat_seconds is not None:
            note += f"; gradient statistics (made once, kept for every pass) {stat_seconds / 60:.0f} min"
        if note:
            print(f"| {folder.name} | settings | {note} | | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
