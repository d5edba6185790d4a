import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

SUBJECTS = ["the cat", "a dog", "the bird", "my friend"]
VERBS = ["sat on", "looked at", "ran to", "jumped over"]
OBJECTS = ["the mat", "a tree", "the house", "the river"]


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
    for name, lines in zip(names, texts):
        (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own corpus cache and a fixed thread count (tiny models run faster on one)."""
    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture
def corpus_dir(tmp_path):
    return write_corpus(tmp_path / "corpus")


TINY = ["--emsize", "24", "--nhid", "24", "--nlayers", "1", "--dropout", "0.0", "--batch-size", "8",
        "--bptt", "10", "--eval-batch-size", "4", "--lr", "5", "--device", "cpu", "--log-interval", "10",
        "--dtype", "fp32"]


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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small LSTM run on the grammar corpus, trained once and shared by read-only tests."""
    return train_once(tmp_path_factory, "trained", lambda base: write_corpus(base / "corpus"),
                      ["--epochs", "4", *TINY])
