"""The summary of a gpu_reproduce.sh run: one table in OUT/summary.md and the same in OUT/summary.json.

    python -m experiments.gpu_summary LOGS OUT [--dyn-pass FILE]

LOGS is the script's log folder; each file is read when it is there, so the summary can be made
after any step. Files named qrnn-* are the QRNN's training and test, beside the main preset's.
steps.tsv holds one line per step: name, exit status, seconds, deadline (seconds).
--dyn-pass: dynamic evaluation's kept pass (evaluate.py --dyn-checkpoint), which exists only when
the pass was stopped by its deadline; its sums so far give the perplexity of the text scored.
"""
import argparse
import json
import math
from pathlib import Path

# Issue 31's targets on one H200 with MINUTES = 15: (what, key in the summary, bound, "max" or "min").
TARGETS = [("WT2 test ppl, plain", "test_ppl", 65.8, "max"), ("with the cache", "cache_ppl", 52.0, "max"),
           ("with dynamic evaluation", "dynamic_ppl", 46.4, "max"),
           ("bf16 training, ours / plain", "bf16_train_ratio", 1.0, "min"),
           ("bf16 evaluation, ours / plain", "bf16_eval_ratio", 1.15, "min"),
           ("WT2 test at batch 1, seconds", "test_seconds", 6.0, "max")]


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_line(path):
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else ""


def steps(logs):
    rows = []
    if (logs / "steps.tsv").exists():
        for line in (logs / "steps.tsv").read_text().splitlines():
            name, rc, seconds, deadline = line.split("\t")
            rows.append({"step": name, "exit": int(rc), "seconds": int(seconds), "deadline": int(deadline)})
    return rows


def bench(logs):
    """dtype -> ours and plain tokens/s, training and evaluation, and their ratios."""
    report = read_json(logs / "bench.json") or {"runs": []}
    return {run["dtype"]: {"ours_train": round(run["ours"]["train"]["tokens_per_s"]),
                           "plain_train": round(run["plain"]["train"]["tokens_per_s"]),
                           "ours_eval": round(run["ours"]["eval"]["tokens_per_s"]),
                           "plain_eval": round(run["plain"]["eval"]["tokens_per_s"]),
                           **{f"{p}_ratio": run["ratio_ours_to_plain"][p] for p in ("train", "eval")}}
            for run in report["runs"]}


def training(logs, prefix=""):
    """One model's training: PREFIX is "" for the main preset's logs, "qrnn-" for the QRNN's."""
    metrics = logs / f"{prefix}metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    if not rows:
        return {}
    best = min(rows, key=lambda r: r["val_loss"])
    speeds = sorted(r["train_tokens_per_s"] for r in rows)
    config = read_json(logs / f"{prefix}config.json") or {}
    return {"preset": config.get("preset"), "dtype": config.get("dtype"), "epochs": rows[-1]["epoch"],
            "minutes": rows[-1]["minutes"], "best_val_ppl": round(best["val_ppl"], 2), "best_epoch": best["epoch"],
            "median_train_tokens_per_s": round(speeds[len(speeds) // 2])}


def partial_pass(path, bptt=5):
    """Perplexity of the part of the text that a stopped dynamic-evaluation pass scored (batch 1)."""
    import torch
    saved = torch.load(path, map_location="cpu", weights_only=True)
    tokens = saved["segment"] * bptt
    return {"tokens": tokens, "ppl": round(math.exp(float(saved["nats"]) / tokens), 2),
            "seconds": round(saved["seconds"], 1)}


def scores(logs, dyn_pass=None, prefix=""):
    plain, cache, dynamic = (read_json(logs / f"{prefix}{name}.json")
                             for name in ("test", "test-cache", "test-dynamic"))
    out = {}
    if plain:
        out.update(test_ppl=round(plain["ppl"], 2), test_seconds=plain["seconds"], test_tokens=plain["tokens"])
    if cache:
        out.update(cache_ppl=round(cache["ppl"], 2), cache_seconds=cache["seconds"],
                   cache_pass_without_cache_ppl=round(cache["without_cache"]["ppl"], 2))
    if dynamic:
        out.update(dynamic_ppl=round(dynamic["ppl"], 2), dynamic_seconds=dynamic["seconds"],
                   dynamic_stat_batches=dynamic["dynamic_eval"]["stat_batches"])
    elif dyn_pass and Path(dyn_pass).exists():
        out["dynamic_partial"] = partial_pass(dyn_pass)
    return out


def summarize(logs, dyn_pass=None):
    versions = {}
    if (logs / "versions.txt").exists():
        for line in (logs / "versions.txt").read_text().splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                versions[key] = value
    speed = bench(logs)
    result = {"versions": versions, "steps": steps(logs), "tests": last_line(logs / "tests.log"),
              "bench": speed, "train": training(logs), "test": scores(logs, dyn_pass),
              "qrnn": {"train": training(logs, "qrnn-"), "test": scores(logs, prefix="qrnn-")},
              "sample": (logs / "sample.log").read_text(errors="replace").strip()
              if (logs / "sample.log").exists() else None, "profile": read_json(logs / "profile.json")}
    # The targets are the WikiText-2 model's: test scores of a run on it, bench.py at its shape.
    found = dict(result["test"]) if (read_json(logs / "config.json") or {}).get("data") == "wikitext-2" else {}
    if "bf16" in speed and (read_json(logs / "bench.json") or {}).get("config") == "awd-lstm-wt2":
        found.update({f"bf16_{p}_ratio": speed["bf16"][f"{p}_ratio"] for p in ("train", "eval")})
    result["targets"] = [{"what": what, "target": bound, "got": found.get(key),
                          "met": None if found.get(key) is None else
                          (found[key] <= bound if sense == "max" else found[key] >= bound)}
                         for what, key, bound, sense in TARGETS]
    return result


def markdown(s):
    lines = ["# gpu_reproduce.sh", ""] + [f"- {k}: {v}" for k, v in s["versions"].items()]
    lines += ["", "| step | exit | seconds | deadline |", "|---|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['exit']} | {r['seconds']} | {r['deadline']} |" for r in s["steps"]]
    lines += ["", f"Tests (`pytest -m cuda`): {s['tests']}", ""]
    if s["bench"]:
        lines += ["| bench, tokens/s | ours train | plain train | ratio | ours eval | plain eval | ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {dtype} | {b['ours_train']:,} | {b['plain_train']:,} | {b['train_ratio']} | "
                  f"{b['ours_eval']:,} | {b['plain_eval']:,} | {b['eval_ratio']} |" for dtype, b in s["bench"].items()]
        lines.append("")
    lines += [f"Training: {json.dumps(s['train'])}", "", f"Test: {json.dumps(s['test'])}", ""]
    lines += head_to_head(s)
    lines += ["| target | bound | got | met |", "|---|---:|---:|---|"]
    lines += [f"| {t['what']} | {t['target']} | {t['got']} | {t['met']} |" for t in s["targets"]]
    if s["profile"]:
        lines += ["", f"Profile: {json.dumps(s['profile'])}"]
    if s["sample"]:
        lines += ["", "Sample:", "", "```text", s["sample"], "```"]
    return "\n".join(lines) + "\n"


def head_to_head(s):
    """The main preset's and the QRNN's rows side by side, when the QRNN was trained."""
    if not s["qrnn"]["train"]:
        return []
    lines = ["| model (preset) | minutes | epochs | train tokens/s | best val | test | with the cache |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for run in (s, s["qrnn"]):
        t, test = run["train"], run["test"]
        speed = t.get("median_train_tokens_per_s")
        cells = (t.get("preset"), t.get("minutes"), t.get("epochs"), speed and f"{speed:,}", t.get("best_val_ppl"),
                 test.get("test_ppl"), test.get("cache_ppl"))
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", type=Path, help="gpu_reproduce.sh's log folder")
    p.add_argument("out", type=Path, help="folder for summary.md and summary.json")
    p.add_argument("--dyn-pass", default=None, help="a stopped dynamic-evaluation pass (evaluate.py --dyn-checkpoint)")
    args = p.parse_args(argv)
    s = summarize(args.logs, args.dyn_pass)
    (args.out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (args.out / "summary.md").write_text(markdown(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
