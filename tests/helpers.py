"""Shared test helpers: tiny corpora, tiny run flags, readers of a run directory, and the
experiment drivers' scripts run in the test's own process."""
import contextlib
import hashlib
import io
import random
from pathlib import Path

import pytest
import torch

from lm.checkpoint import read_metrics
from lm.precision import bf16_is_fast

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# oneDNN's bf16 LSTM and linear kernels need AVX512 (BW, VL, DQ) or AVX-NE-CONVERT; on an AVX2-only CPU
# they raise, so the tests that run them there are skipped, saying why.
needs_bf16_cpu = pytest.mark.skipif(not bf16_is_fast("cpu"),
                                    reason="this CPU has no oneDNN bf16 kernels (needs AVX512 or AVX-NE-CONVERT)")

SUBJECTS = ["the cat", "a dog", "the bird", "my friend"]
VERBS = ["sat on", "looked at", "ran to", "jumped over"]
OBJECTS = ["the mat", "a tree", "the house", "the river"]

# A tiny baseline LSTM run.
TINY = ["--emsize", "24", "--nhid", "24", "--nlayers", "1", "--dropout", "0.0", "--batch-size", "8",
        "--bptt", "10", "--eval-batch-size", "4", "--lr", "5", "--device", "cpu", "--log-interval", "10",
        "--dtype", "fp32"]
# A small AWD-LSTM for training tests: 2 layers, every technique on.
AWD_TINY = ["--model", "awd-lstm", "--emsize", "16", "--nhid", "32", "--nlayers", "2",
            "--batch-size", "8", "--bptt", "10", "--eval-batch-size", "4", "--device", "cpu",
            "--log-interval", "10", "--lr", "10", "--dropout-input", "0.2", "--dropout-hidden", "0.1",
            "--dropout-output", "0.2", "--dropout-weight", "0.2", "--dropout-embedding", "0.05", "--dtype", "fp32"]


def grammar_lines(n, seed):
    """n sentences of a tiny grammar: 3 four-way choices per line, so a good model's perplexity
    is about 2 while the vocabulary has about 20 words."""
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ." for _ in range(n)]


def write_corpus(folder, train=None, valid=None, test=None, names=("train.txt", "valid.txt", "test.txt")):
    """Write a corpus folder; splits default to grammar sentences."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = [train if train is not None else grammar_lines(400, 0),
             valid if valid is not None else grammar_lines(60, 1),
             test if test is not None else grammar_lines(60, 2)]
    for name, lines in zip(names, texts, strict=True):
        (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


def train_once(tmp_path_factory, name, write_data, args):
    """Train a small run in its own folder and cache; returns (run dir, data path)."""
    import train
    base = tmp_path_factory.mktemp(name)
    data_path = write_data(base)
    run = base / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("LM_DATA_CACHE", str(base / "cache"))
    torch.set_num_threads(1)
    assert train.main(["--data", str(data_path), "--save", str(run), *args]) == 0
    mp.undo()
    return run, data_path


def scripts_in_process(monkeypatch):
    """Make the experiment drivers run train.py, evaluate.py and generate.py through their main()
    in this process, with the same command lines, rather than each in a new Python that imports
    torch again (tests/test_char.py checks that the two give the same output)."""
    import evaluate
    import generate
    import train
    from experiments import scripts
    mains = {"train.py": train.main, "evaluate.py": evaluate.main, "generate.py": generate.main}

    def run(script, argv, capture=False):
        out = io.StringIO()
        with contextlib.redirect_stdout(out) if capture else contextlib.nullcontext():
            try:
                code = mains[script]([str(a) for a in argv])
            except SystemExit as e:  # a usage error
                code = e.code
        return code, out.getvalue() if capture else None

    monkeypatch.setattr(scripts, "run", run)


def metrics(run):
    """Per-epoch numbers of a run, without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "train_tokens_per_s", "minutes")}
            for r in read_metrics(run)]


def digests(folder):
    """File name -> SHA-256 of its bytes, for every file in folder: to check that nothing changed."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def weights(run, name="last.pt"):
    return torch.load(Path(run) / name, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def step_by_step(x, w_ih, w_hh, b_ih, b_hh):
    """Reference LSTM from a zero state, one time step at a time, with the given (possibly
    dropped) matrices; gates in PyTorch's order (i, f, g, o)."""
    h = c = torch.zeros(x.size(1), w_hh.size(1))
    outs = []
    for x_t in x:
        i, f, g, o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


def spy_on_masks(monkeypatch, *modules):
    """Record every dropout mask that `modules` draw through their dropout_mask, as (shape, p,
    mask), in order; returns the list, which fills as the masks are drawn."""
    drawn, real = [], modules[0].dropout_mask

    def spy(shape, p, device):
        mask = real(shape, p, device)
        drawn.append((tuple(shape), p, mask))
        return mask

    for module in modules:
        monkeypatch.setattr(module, "dropout_mask", spy)
    return drawn
