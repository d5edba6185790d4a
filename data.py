"""Corpora for word-level language modeling: load, tokenize, build a vocabulary, cache, batch.

A corpus comes either from the Hugging Face hub (`--data wikitext-2`, the default) or from a
local folder holding train.txt / valid.txt / test.txt (or wiki.{train,valid,test}.tokens).
Both routes tokenize the same way, the convention of AWD-LSTM and pytorch/examples:

    every line is split on whitespace and gets one <eos> appended, empty lines included;
    the vocabulary is built from the training split, in order of first appearance;
    a valid/test token missing from it becomes <unk> (an error if there is no <unk>).
"""
import hashlib
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

EOS = "<eos>"
UNK = "<unk>"

# --data NAME -> (hub dataset, config, text column); other names are taken as folders.
HUB_DATASETS = {
    "wikitext-2": ("Salesforce/wikitext", "wikitext-2-v1", "text"),
    "wikitext-103": ("Salesforce/wikitext", "wikitext-103-v1", "text"),
    "ptb": ("ptb-text-only/ptb_text_only", "penn_treebank", "sentence"),
}
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
SPLITS = ("train", "valid", "test")
# Accepted file names of each split in a local folder, in order of preference.
SPLIT_FILES = {s: (f"{s}.txt", f"wiki.{s}.tokens") for s in SPLITS}
CACHE_VERSION = 1
LOCAL_HINT = "pass --data PATH to a folder with train.txt/valid.txt/test.txt"


class DataError(Exception):
    """A problem with the user's data, reported as one line that says what to do."""


@dataclass
class Corpus:
    """Token ids of the three splits, as 1-D int64 tensors, and the vocabulary (id -> word)."""
    itos: list
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source: str  # what --data named, for messages and the checkpoint
    fingerprint: str  # hash of the source's content; it keys the cache

    def split(self, name):
        return getattr(self, name)


def tokenize(lines):
    """Whitespace tokens of each line, plus one <eos> per line (empty lines included)."""
    words = []
    for line in lines:
        words.extend(line.split())
        words.append(EOS)
    return words


def build_vocab(words):
    """id -> word for every distinct word, in order of first appearance."""
    return list(dict.fromkeys(words))


def encode(words, stoi, split):
    """Map words to ids; unknown words become <unk>, or raise if the vocabulary has none."""
    unk = stoi.get(UNK)
    ids = [stoi.get(w, unk) for w in words]
    if unk is None and None in ids:
        missing = sorted({w for w in words if w not in stoi})
        shown = ", ".join(repr(w) for w in missing[:5])
        raise DataError(
            f"{len(missing)} word(s) of the {split} split are not in the training vocabulary "
            f"(e.g. {shown}) and the vocabulary has no {UNK} to map them to; "
            f"add {UNK} to train.txt or remove those words")
    return torch.tensor(ids, dtype=torch.int64)


def build_corpus(split_lines, source, fingerprint):
    """split_lines: {'train'|'valid'|'test': iterable of lines} -> Corpus."""
    words = {s: tokenize(split_lines[s]) for s in SPLITS}
    itos = build_vocab(words["train"])
    stoi = {w: i for i, w in enumerate(itos)}
    ids = {s: encode(words[s], stoi, s) for s in SPLITS}
    return Corpus(itos, ids["train"], ids["valid"], ids["test"], source, fingerprint)


def cache_dir():
    return Path(os.environ.get("LM_DATA_CACHE", Path.home() / ".cache" / "lstm-lm"))


def _load_cached(fingerprint, source):
    path = cache_dir() / f"{fingerprint}.pt"
    if not path.exists():
        return None
    try:
        d = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError):
        return None  # a damaged cache entry is rebuilt
    return Corpus(d["itos"], d["train"], d["valid"], d["test"], source, fingerprint)


def _store_cached(corpus):
    path = cache_dir() / f"{corpus.fingerprint}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"itos": corpus.itos, "train": corpus.train, "valid": corpus.valid,
                "test": corpus.test}, tmp)
    os.replace(tmp, path)


def split_paths(folder):
    """{'train'|'valid'|'test': Path} of a local corpus folder, with one-line errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder: {folder}; {LOCAL_HINT}, or name a hub dataset "
                        f"({', '.join(HUB_DATASETS)})")
    paths = {}
    for split, names in SPLIT_FILES.items():
        found = [folder / n for n in names if (folder / n).is_file()]
        if not found:
            raise DataError(f"{folder} has no {split} split: expected {' or '.join(names)}")
        if found[0].stat().st_size == 0:
            raise DataError(f"{found[0]} is empty: each split needs some text")
        paths[split] = found[0]
    return paths


def read_lines(path):
    """Lines of a text file, split on newlines only (as iterating over the file does)."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def load_local(folder):
    paths = split_paths(folder)
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for split in SPLITS:
        h.update(paths[split].read_bytes())
    fingerprint = h.hexdigest()[:32]
    source = str(Path(folder).resolve())  # absolute, so a checkpoint finds it from anywhere
    corpus = _load_cached(fingerprint, source)
    if corpus is not None:
        return corpus
    lines = {}
    for split in SPLITS:
        try:
            lines[split] = read_lines(paths[split])
        except UnicodeDecodeError as e:
            raise DataError(f"{paths[split]} is not UTF-8 text ({e.reason} at byte {e.start})")
    corpus = build_corpus(lines, source, fingerprint)
    _store_cached(corpus)
    return corpus


def hub_host():
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname


def hub_reachable(host, timeout=3.0):
    """Whether the hub's host answers; without it `datasets` retries for half a minute."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hub(name):
    repo, config, column = HUB_DATASETS[name]
    offline = not hub_reachable(hub_host())
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # still serves a copy in the local HF cache
    try:
        import datasets
        datasets.logging.set_verbosity_error()
        ds = datasets.load_dataset(repo, config)
    except Exception as e:  # noqa: BLE001 (no network, outage, missing package: all end the same way)
        if offline:
            reason = f"{hub_host()} is unreachable and the local Hugging Face cache has no copy"
        else:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"could not load {name} ({repo}, {config}) from the Hugging Face hub: "
                        f"{reason}; {LOCAL_HINT}") from None
    missing = [s for s in HUB_SPLITS.values() if s not in ds]
    if missing:
        raise DataError(f"hub dataset {repo} ({config}) has no split {missing[0]}; {LOCAL_HINT}")
    h = hashlib.sha256(f"v{CACHE_VERSION}|{repo}|{config}".encode())
    for split in HUB_SPLITS.values():
        h.update(ds[split]._fingerprint.encode())
    fingerprint = h.hexdigest()[:32]
    corpus = _load_cached(fingerprint, name)
    if corpus is not None:
        return corpus
    lines = {s: ds[hub][column] for s, hub in HUB_SPLITS.items()}
    corpus = build_corpus(lines, name, fingerprint)
    _store_cached(corpus)
    return corpus


def load_corpus(data):
    """--data value -> Corpus: a hub name from HUB_DATASETS, else a local folder."""
    if data in HUB_DATASETS and not Path(data).is_dir():
        return load_hub(data)
    return load_local(data)


# batchify lays a 1-D token stream out as `bsz` independent columns, dropping the tail that
# does not fill a row. With the alphabet as data and bsz = 4:
#
#   a b c d e f g h i j k l m n o p q r s t u v w x y z
#
#   ┌ a g m s ┐   row t holds token t of every column; column b continues from one
#   │ b h n t │   batch to the next, so a recurrent state carried across batches
#   │ c i o u │   sees an unbroken stream. y and z are dropped.
#   │ d j p v │
#   │ e k q w │
#   └ f l r x ┘   shape (len // bsz, bsz)
def batchify(data, bsz, device=None):
    nrows = data.size(0) // bsz
    if nrows < 2:
        raise DataError(f"{data.size(0)} tokens are too few for batch size {bsz}")
    return data[: nrows * bsz].view(bsz, nrows).t().contiguous().to(device)


# get_batch cuts rows [i, i+seq_len) of a batchified source as the input and the same rows
# shifted down by one as the target. With bptt = 2 and the layout above, i = 0 gives
#
#   input  ┌ a g m s ┐   target ┌ b h n t ┐
#          └ b h n t ┘          └ c i o u ┘   both (seq_len, bsz)
#
# seq_len shrinks at the end of the source, where fewer than seq_len + 1 rows are left.
def get_batch(source, i, seq_len):
    seq_len = min(seq_len, source.size(0) - 1 - i)
    return source[i: i + seq_len], source[i + 1: i + 1 + seq_len]
