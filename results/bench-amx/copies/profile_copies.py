"""Where the copies of a bf16 training step go: one train.train_step of a benchmark config under
torch.profiler with input shapes recorded, after three warm-up steps: the operators by self time,
grouped by their input shapes (each cast, transpose and per-step copy is told apart by its shape).

    python results/bench-amx/copies/profile_copies.py [CONFIG]   (default awd-lstm-wt2)
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from kernels import Workspace  # noqa: E402

import bench  # noqa: E402
import train  # noqa: E402
from data import batchify, get_batch, load_corpus  # noqa: E402

name = sys.argv[1] if len(sys.argv) > 1 else "awd-lstm-wt2"
corpus = load_corpus("wikitext-2")
model, cfg = bench.build(name, len(corpus.itos), "bf16")
source = batchify(corpus.train[:200_000], cfg["batch_size"])
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
hidden, workspace = model.init_hidden(cfg["batch_size"]), Workspace()
model.train()


def step(i):
    global hidden
    x, y = get_batch(source, i * cfg["bptt"], cfg["bptt"])
    hidden = train.train_step(model, x, y, hidden, optimizer, cfg, workspace=workspace).hidden


for i in range(3):
    step(i)
with torch.profiler.profile(record_shapes=True) as prof:
    step(3)
print(f"== {name}, bf16, one training step of {cfg['batch_size']}x{cfg['bptt']} tokens, "
      f"{torch.get_num_threads()} threads")
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25,
                                                         max_name_column_width=30, max_shapes_column_width=70))
