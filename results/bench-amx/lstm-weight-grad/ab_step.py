r"""Whole bf16 training steps of a bench.py config with our LSTM recurrence as it was and as it is,
alternated in one process (bench.alternate_training), so that this machine's swings in speed hit
both alike. "before": kernels.py of the commit given (its lstm_sequence: the weights cast to bf16
outside the autograd Function, their gradients as d_gates.T @ inputs, read transposed); "after":
kernels.lstm_sequence of the working tree, with tried.diff applied (the casts inside, the gradients
as (inputs.T @ d_gates).T, written contiguous by the cast back to fp32).

    git show d26c759:kernels.py > /tmp/kernels_before.py
    git apply results/bench-amx/lstm-weight-grad/tried.diff   # the change, not kept
    python results/bench-amx/lstm-weight-grad/ab_step.py /tmp/kernels_before.py awd-lstm-wt2
"""
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import bench  # noqa: E402
import model as model_module  # noqa: E402


def main():
    spec = importlib.util.spec_from_file_location("kernels_before", sys.argv[1])
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    name = sys.argv[2] if len(sys.argv) > 2 else "awd-lstm-wt2"
    after = model_module.lstm_sequence

    def use(fn):
        return lambda: setattr(model_module, "lstm_sequence", fn)

    bench.compare_training(name, {"before": use(before.lstm_sequence), "after": use(after)})


if __name__ == "__main__":
    main()
