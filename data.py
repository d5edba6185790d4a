"""Corpora for word- and character-level language modeling: load, tokenize, build a
vocabulary, cache, batch.

A corpus comes from the copies shipped in data/ (`--data wikitext-2`, the default, and
`tinyshakespeare`: no network needed), from the Hugging Face hub (`wikitext-103`, `ptb`, or
`hub:NAME` for any of HUB_DATASETS), from a local folder holding train.txt / valid.txt / test.txt
(or wiki.{train,valid,test}.tokens), or, at character level, from one plain text file cut into
contiguous splits (split_text). All routes tokenize the same way:

    word level, the convention of AWD-LSTM and pytorch/examples: every line is split on
    whitespace and gets one <eos> appended, empty lines included; the vocabulary is the training
    split's words in order of first appearance; a valid/test word missing from it becomes <unk>
    (an error if there is no <unk>);
    character level: every character is a token, newlines included; the vocabulary is the
    training split's characters, sorted; a valid/test character missing from it is an error.
"""
import gzip
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from lm import cli
from lm.checkpoint import CheckpointError, load_file, save_file  # checkpoint.py knows the file formats

EOS = "<eos>"
UNK = "<unk>"

# --data NAME -> (hub dataset, config, text column); other names are taken as folders.
HUB_DATASETS = {
    "wikitext-2": ("Salesforce/wikitext", "wikitext-2-v1", "text"),
    "wikitext-103": ("Salesforce/wikitext", "wikitext-103-v1", "text"),
    "ptb": ("ptb-text-only/ptb_text_only", "penn_treebank", "sentence"),
    # One row per split, cut from char-rnn's input.txt by the same rule as split_text.
    "tinyshakespeare": ("karpathy/tiny_shakespeare", None, "text"),
}
# Corpora shipped in data/, gzipped and read in place, so that the defaults need no network:
# --data NAME -> (folder, {split or "all": (file, sha256 of its uncompressed text)}). The files
# and their provenance: data/README.md.
BUNDLED_DIR = Path(__file__).resolve().parent / "data"
BUNDLED = {
    "wikitext-2": ("wikitext-2", {
        "train": ("train.txt.gz", "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
        "valid": ("valid.txt.gz", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
        "test": ("test.txt.gz", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0")}),
    "tinyshakespeare": ("tinyshakespeare", {
        "all": ("input.txt.gz", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")}),
}
LEVELS = ("word", "char")
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
SPLITS = ("train", "valid", "test")
# Accepted file names of each split in a local folder, in order of preference.
SPLIT_FILES = {s: (f"{s}.txt", f"wiki.{s}.tokens") for s in SPLITS}
CACHE_VERSION = 2
LOCAL_HINT = ("pass --data PATH to a folder with train.txt/valid.txt/test.txt "
              "(or, with --level char, to one text file)")


class DataError(cli.UserError):
    """A problem with the user's data, reported as one line that says what to do."""


@dataclass
class Corpus:
    """Token ids of the three splits, as 1-D int64 tensors, and the vocabulary (id -> token)."""
    itos: list
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source: str  # what --data named, for messages and the checkpoint
    fingerprint: str  # hash of the source's content and the level; it keys the cache
    level: str = "word"

    def split(self, name):
        """A split by name; "valid+test" is the two joined, the last 10% of a split_text corpus."""
        if name == "valid+test":
            return torch.cat([self.valid, self.test])
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


def encode_chars(text, stoi, split):
    """Map characters to ids; a character missing from the vocabulary is an error naming it."""
    missing = sorted(set(text) - stoi.keys())
    if missing:
        raise DataError(f"the {split} split has {len(missing)} character(s) that the training split "
                        f"lacks: {', '.join(repr(c) for c in missing[:10])}; the vocabulary comes "
                        "from training, so replace or remove them")
    return torch.tensor([stoi[c] for c in text], dtype=torch.int64)


def build_corpus(split_lines, source, fingerprint, level="word"):
    """split_lines: {'train'|'valid'|'test': list of lines (word level) or one string (char
    level)} -> Corpus."""
    if level == "char":
        itos = sorted(set(split_lines["train"]))
        stoi = {c: i for i, c in enumerate(itos)}
        ids = {s: encode_chars(split_lines[s], stoi, s) for s in SPLITS}
    else:
        words = {s: tokenize(split_lines[s]) for s in SPLITS}
        itos = build_vocab(words["train"])
        stoi = {w: i for i, w in enumerate(itos)}
        ids = {s: encode(words[s], stoi, s) for s in SPLITS}
    return Corpus(itos, ids["train"], ids["valid"], ids["test"], source, fingerprint, level)


def split_text(text):
    """Cut one text into contiguous train / valid / test: the first 90%, the next 5%, the rest.

    The boundaries are int(0.9 n) and that plus int(0.5 (n - int(0.9 n))), the rule of the hub's
    karpathy/tiny_shakespeare (and TensorFlow Datasets'), so a local input.txt gives the hub's
    splits: for its 1,115,394 characters, [0, 1003854), [1003854, 1059624), [1059624, 1115394).
    """
    a = int(len(text) * 0.9)
    b = a + int((len(text) - a) * 0.5)
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


def cache_dir():
    return Path(os.environ.get("LM_DATA_CACHE", Path.home() / ".cache" / "lstm-lm"))


def _load_cached(fingerprint, source, level):
    path = cache_dir() / f"{fingerprint}.pt"
    if not path.exists():
        return None
    try:
        d, verified = load_file(path, "the corpus cache", "it is rebuilt")
        if verified:  # an entry without a digest, from before it existed, is rebuilt too
            return Corpus(d["itos"], d["train"], d["valid"], d["test"], source, fingerprint, level)
    except (CheckpointError, KeyError, TypeError):
        pass  # a damaged cache entry is rebuilt
    return None


def _store_cached(corpus):
    path = cache_dir() / f"{corpus.fingerprint}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"itos": corpus.itos, "train": corpus.train, "valid": corpus.valid, "test": corpus.test}, path)


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


def lines_of(text):
    """Lines of a file's text, split on newlines only (as iterating over the file does)."""
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def read_text(path):
    raw = path.read_bytes()
    if b"\0" in raw:
        raise DataError(f"{path} holds NUL bytes: it is a binary file, not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_local(path, level="word"):
    """A folder of three split files, or (char level) one text file cut by split_text."""
    path = Path(path)
    single = path.is_file()
    if single and level != "char":
        raise DataError(f"{path} is a file: one text file is cut into splits only with --level char; "
                        "at word level pass a folder with train.txt/valid.txt/test.txt")
    paths = {"all": path} if single else split_paths(path)
    h = hashlib.sha256(f"v{CACHE_VERSION}|{level}".encode())
    for p in paths.values():
        h.update(p.read_bytes())
    source = str(path.resolve())  # absolute, so a checkpoint finds it from anywhere
    return _cached_corpus(source, h.hexdigest()[:32], level,
                          lambda: {name: read_text(p) for name, p in paths.items()})


def _cached_corpus(source, fingerprint, level, read_texts):
    """The corpus under `fingerprint` from the cache, or built from read_texts(): {split: text},
    or {"all": text} for one text to cut by split_text."""
    corpus = _load_cached(fingerprint, source, level)
    if corpus is not None:
        return corpus
    texts = read_texts()
    if "all" in texts:
        splits = split_text(texts["all"])
        for split, text in splits.items():
            if len(text) < 2:
                raise DataError(f"{source} is too short: its {split} split has {len(text)} characters")
    elif level == "char":
        splits = texts
    else:
        splits = {s: lines_of(texts[s]) for s in SPLITS}
    corpus = build_corpus(splits, source, fingerprint, level)
    _store_cached(corpus)
    return corpus


def read_bundled(name):
    """{split or "all": text} of a corpus shipped in data/, each file checked against its
    recorded sha256."""
    folder, files = BUNDLED[name]
    texts = {}
    for split, (file, sha256) in files.items():
        path = BUNDLED_DIR / folder / file
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as e:
            raise DataError(f"cannot read the bundled {path}: {e}; restore it with git checkout -- {path}") from None
        if hashlib.sha256(raw).hexdigest() != sha256:
            raise DataError(f"the bundled {path} does not match its recorded checksum (damaged or changed); "
                            f"restore it with git checkout -- {path}")
        texts[split] = raw.decode("utf-8")
    return texts


def load_bundled(name, level="word"):
    """A corpus shipped with the repository (BUNDLED), read from its gzipped files in place."""
    folder, files = BUNDLED[name]
    if "all" in files and level != "char":
        raise DataError(f"{name} is one text, cut into splits only with --level char")
    texts = read_bundled(name)  # checked at every load, cached or not
    key = "|".join(sha for _, sha in files.values())
    fingerprint = hashlib.sha256(f"v{CACHE_VERSION}|{level}|bundled|{key}".encode()).hexdigest()[:32]
    return _cached_corpus(name, fingerprint, level, lambda: texts)


def hub_host():
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname


def hub_reachable(host, timeout=3.0):
    """Whether the hub's host answers; without it `datasets` retries for half a minute."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hub(name, level="word"):
    repo, config, column = HUB_DATASETS[name]
    offline = not hub_reachable(hub_host())
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # still serves a copy in the local HF cache
    where = f"{repo}, {config}" if config else repo
    try:
        import datasets
        datasets.logging.set_verbosity_error()
        ds = datasets.load_dataset(repo, config)
    except Exception as e:  # noqa: BLE001 (no network, outage, missing package: all end the same way)
        if offline:
            reason = f"{hub_host()} is unreachable and the local Hugging Face cache has no copy"
        else:
            reason = cli.first_line(e)
        raise DataError(f"could not load {name} ({where}) from the Hugging Face hub: {reason}; "
                        f"{LOCAL_HINT}") from None
    missing = [s for s in HUB_SPLITS.values() if s not in ds]
    if missing:
        raise DataError(f"hub dataset {name} ({where}) has no split {missing[0]}; {LOCAL_HINT}")
    h = hashlib.sha256(f"v{CACHE_VERSION}|{level}|{repo}|{config}".encode())
    for split in HUB_SPLITS.values():
        h.update(ds[split]._fingerprint.encode())
    fingerprint = h.hexdigest()[:32]
    corpus = _load_cached(fingerprint, name, level)
    if corpus is not None:
        return corpus
    rows = {s: ds[hub][column] for s, hub in HUB_SPLITS.items()}
    if level == "char":  # the rows of a split, as one text (wikitext's rows end in newlines)
        rows = {s: "".join(r) for s, r in rows.items()}
    corpus = build_corpus(rows, name, fingerprint, level)
    _store_cached(corpus)
    return corpus


def corpus_name(data):
    """The name that tables of published settings are keyed by, for a --data value: the bundled
    or hub name, or a folder's last component (../shared/data/wikitext-2 -> wikitext-2)."""
    return Path(data.removeprefix("hub:")).name


def load_corpus(data, level="word"):
    """--data value -> Corpus at `level` ("word" or "char"): a corpus bundled in data/
    (wikitext-2, tinyshakespeare), a hub name from HUB_DATASETS (wikitext-103, ptb; "hub:NAME"
    reaches the hub for a bundled one too), else a local folder (or, at char level, a text file)."""
    if level not in LEVELS:
        raise DataError(f"unknown level {level!r}: choose one of {', '.join(LEVELS)}")
    if data in BUNDLED and not Path(data).exists():
        return load_bundled(data, level)
    hub_name = data.removeprefix("hub:")
    if hub_name in HUB_DATASETS and not Path(data).exists():
        return load_hub(hub_name, level)
    return load_local(data, level)


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
