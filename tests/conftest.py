import pytest
import torch

from helpers import TINY, train_once, write_corpus


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own corpus cache and a fixed thread count (tiny models run faster on one)."""
    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture
def corpus_dir(tmp_path):
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small LSTM run on the grammar corpus, trained once and shared by read-only tests."""
    return train_once(tmp_path_factory, "trained", lambda base: write_corpus(base / "corpus"),
                      ["--epochs", "4", *TINY])


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda are skipped where PyTorch sees no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
