"""The table of the CPU-budget trials: one row per run directory, with the flags that set it apart,
its training minutes, epochs and final validation perplexity.

    python results/budget-trials/summarize.py ~/runs/trials/* > results/budget-trials/trials.md
"""
import json
import sys
from pathlib import Path

# Flags every trial shares or that only say where and how it ran.
IGNORED = {"save", "log_interval", "device", "dtype", "val_dtype", "lstm_kernel", "plot", "finetune",
           "checkpoint_every", "max_batches"}


def main(runs):
    configs = {r: json.loads((Path(r) / "config.json").read_text()) for r in runs}
    keys = sorted({k for c in configs.values() for k in c} - IGNORED)
    varying = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    print("| trial | " + " | ".join(varying) + " | minutes | epochs | tokens | val ppl |")
    print("|" + "---|" * (len(varying) + 5))
    for run, cfg in configs.items():
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]
        if not rows:
            continue
        last = rows[-1]
        minutes = last.get("minutes", sum(r["epoch_seconds"] for r in rows) / 60)
        # Rows written before train_tokens was logged: tokens/s x epoch time, which counts validation too.
        estimated = any("train_tokens" not in r for r in rows)
        tokens = sum(r.get("train_tokens", r["train_tokens_per_s"] * r["epoch_seconds"]) for r in rows)
        cells = [json.dumps(cfg.get(k)) for k in varying]
        print(f"| {Path(run).name} | " + " | ".join(cells)
              + f" | {minutes:.1f} | {last['epoch']}{' (partial)' if last.get('partial') else ''}"
              + f" | {'<' if estimated else ''}{tokens / 1e6:.2f}M | {min(r['val_ppl'] for r in rows):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
