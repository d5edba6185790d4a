import gzip
import shutil

import pytest
import torch

import data
from data import EOS, UNK, DataError, batchify, get_batch, load_corpus
from helpers import SHARED_DATA, write_corpus


def test_tokenize_adds_one_eos_per_line_including_empty_lines():
    assert data.tokenize(["a b", "", "  c  "]) == ["a", "b", EOS, EOS, "c", EOS]


def test_vocabulary_comes_from_train_in_order_of_first_appearance(tmp_path):
    folder = write_corpus(tmp_path, train=["b a", "a c"], valid=["c"], test=["a"])
    corpus = load_corpus(str(folder))
    assert corpus.itos == ["b", "a", EOS, "c"]
    assert corpus.train.tolist() == [0, 1, 2, 1, 3, 2]
    assert corpus.train.dtype == torch.int64


def test_unseen_valid_word_maps_to_unk(tmp_path):
    folder = write_corpus(tmp_path, train=[f"a {UNK} b"], valid=["a zebra"], test=["b"])
    corpus = load_corpus(str(folder))
    unk = corpus.itos.index(UNK)
    assert corpus.valid.tolist() == [corpus.itos.index("a"), unk, corpus.itos.index(EOS)]


def test_unseen_word_without_unk_is_a_clear_error(tmp_path):
    folder = write_corpus(tmp_path, train=["a b"], valid=["a zebra"], test=["b"])
    with pytest.raises(DataError, match=r"valid split.*'zebra'.*no <unk>"):
        load_corpus(str(folder))


def test_local_folder_accepts_wikitext_file_names(tmp_path):
    names = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")
    folder = write_corpus(tmp_path, train=["a b"], valid=["a"], test=["b"], names=names)
    assert load_corpus(str(folder)).train.numel() == 3


@pytest.mark.parametrize("case, message", [
    ("missing_folder", "no such folder"),
    ("missing_split", "has no test split: expected test.txt or wiki.test.tokens"),
    ("empty_file", "is empty"),
])
def test_bad_local_data_gives_one_line_error(tmp_path, case, message):
    folder = tmp_path / "corpus"
    if case != "missing_folder":
        write_corpus(folder, train=["a"], valid=["a"], test=["a"])
    if case == "missing_split":
        (folder / "test.txt").unlink()
    if case == "empty_file":
        (folder / "valid.txt").write_text("")
    with pytest.raises(DataError, match=message) as e:
        load_corpus(str(folder))
    assert "\n" not in str(e.value)


def test_second_load_comes_from_the_cache_and_content_changes_rebuild(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path, train=["a b"], valid=["a"], test=["b"])
    first = load_corpus(str(folder))
    real_build = data.build_corpus
    monkeypatch.setattr(data, "build_corpus", lambda *a: pytest.fail("cache missed"))
    again = load_corpus(str(folder))
    assert again.itos == first.itos and torch.equal(again.train, first.train)
    (folder / "train.txt").write_text("a b c\n")  # new content, new key
    monkeypatch.setattr(data, "build_corpus", real_build)
    assert load_corpus(str(folder)).itos == ["a", "b", "c", EOS]


def test_hub_route_tokenizes_like_the_local_route(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    lines = {"train": ["a b", "", "b c"], "validation": ["a"], "test": ["c b"]}
    fake = datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": [x + "\n" for x in v]})
                                 for s, v in lines.items()})
    monkeypatch.setattr(data, "hub_reachable", lambda host: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config: fake)
    hub = load_corpus("hub:wikitext-2")
    local = load_corpus(str(write_corpus(tmp_path, lines["train"], lines["validation"], lines["test"])))
    assert hub.itos == local.itos
    for split in data.SPLITS:
        assert torch.equal(hub.split(split), local.split(split))


def test_hub_without_network_gives_one_line_error_naming_the_local_route(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def no_network(repo, config):
        raise ConnectionError("Couldn't reach the hub\nlong details")

    monkeypatch.setattr(data, "hub_reachable", lambda host: False)
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(DataError, match="pass --data PATH to a folder with train.txt") as e:
        load_corpus("wikitext-103")
    assert "\n" not in str(e.value)


WT2 = ((2_088_628, 217_646, 245_569), 33_278)


def test_bundled_wikitext_2_has_the_standard_counts_offline(monkeypatch):
    monkeypatch.setattr(data, "load_hub", lambda *a: pytest.fail("went to the hub"))
    corpus = load_corpus("wikitext-2")
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == WT2[0]
    assert len(corpus.itos) == WT2[1] and corpus.source == "wikitext-2"


def test_bundled_wikitext_2_equals_the_verified_copy():
    folder = SHARED_DATA / "wikitext-2"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    bundled, shared = load_corpus("wikitext-2"), load_corpus(str(folder))
    assert bundled.itos == shared.itos
    for split in data.SPLITS:
        assert torch.equal(bundled.split(split), shared.split(split))


def test_a_damaged_bundled_file_is_a_one_line_error(tmp_path, monkeypatch):
    copy = tmp_path / "data"
    shutil.copytree(data.BUNDLED_DIR, copy)
    monkeypatch.setattr(data, "BUNDLED_DIR", copy)
    path = copy / "tinyshakespeare" / "input.txt.gz"
    text = gzip.decompress(path.read_bytes()).replace(b"ROMEO", b"ROMAN", 1)
    path.write_bytes(gzip.compress(text))
    with pytest.raises(DataError, match="does not match its recorded checksum") as e:
        load_corpus("tinyshakespeare", level="char")
    assert "\n" not in str(e.value) and "git checkout" in str(e.value)
    path.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read the bundled"):
        load_corpus("tinyshakespeare", level="char")


def test_ptb_has_the_standard_counts():
    folder = SHARED_DATA / "ptb"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    corpus = load_corpus(str(folder))
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    assert len(corpus.itos) == 10_000


def test_batchify_lays_the_stream_out_in_columns():
    stream = torch.arange(26)  # a..z
    b = batchify(stream, 4)
    assert b.shape == (6, 4)
    assert b[:, 0].tolist() == list(range(6))  # column 0 is a..f, unbroken
    assert b[0].tolist() == [0, 6, 12, 18]  # row 0 is a g m s
    assert 24 not in b and 25 not in b  # y and z are dropped


def test_get_batch_targets_are_inputs_shifted_by_one_row():
    b = batchify(torch.arange(26), 4)
    x, y = get_batch(b, 0, 2)
    assert x.tolist() == [[0, 6, 12, 18], [1, 7, 13, 19]]
    assert y.tolist() == [[1, 7, 13, 19], [2, 8, 14, 20]]
    x, y = get_batch(b, 4, 35)  # the last window is shorter
    assert x.shape == (1, 4) and torch.equal(y, b[5:6])
