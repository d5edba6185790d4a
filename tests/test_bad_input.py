"""The bad-input matrix: each case through the command line of train.py, evaluate.py, tune.py,
generate.py, plot.py or bench.py must end with exit code 2, one line on stderr that starts with
"error:", no traceback, and no file of an existing run directory changed."""
import pickle

import pytest
import torch

import bench
import evaluate
import generate
import plot
import train
import tune
from experiments import char_experiment
from helpers import AWD_TINY, TINY, digests, write_corpus
from lm import cli, config, precision
from lm.checkpoint import BEST, METRICS

SCRIPTS = {"train": train.main, "evaluate": evaluate.main, "generate": generate.main, "tune": tune.main,
           "plot": plot.main, "bench": bench.main}


def corpus(tmp, name="bad", **splits):
    return write_corpus(tmp / name, **splits)


def damaged(tmp, run, how):
    """A copy of the run whose model.pt is damaged `how`."""
    import shutil
    copy = tmp / f"damaged-{how}"
    shutil.copytree(run, copy)
    path = copy / BEST
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "bit-flipped":
        for i in range(200, len(raw), 997):  # flip bits across the archive, its index included
            raw[i] ^= 0x5A
        path.write_bytes(bytes(raw))
    elif how == "newer-format":
        ckpt = torch.load(path, weights_only=True)
        torch.save({**ckpt, "format": 99}, path)
    return copy


class Payload:
    """Unpickling this would create the file named by `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def malicious(tmp, run):
    import shutil
    copy = tmp / "malicious"
    shutil.copytree(run, copy)
    with open(copy / BEST, "wb") as f:
        pickle.dump({"model": Payload(tmp / "PWNED"), "model_config": {}, "train_config": {}}, f)
    return copy


def write_bytes(tmp, name, data):
    folder = corpus(tmp, name)
    (folder / "train.txt").write_bytes(data)
    return folder


# (name, script, argv from (tmp, run, data), what the error must say)
CASES = [
    # data
    ("missing folder", "train", lambda t, r, d: ["--data", t / "nope"], "no such folder"),
    ("empty file", "train", lambda t, r, d: ["--data", write_bytes(t, "e", b"")], "is empty"),
    ("binary file", "train", lambda t, r, d: ["--data", write_bytes(t, "b", bytes(range(256)) * 8)], "binary file"),
    ("non-UTF-8 file", "train", lambda t, r, d: ["--data", write_bytes(t, "l", "caf\xe9 cr\xe8me\n".encode("latin-1"))],
     "not UTF-8"),
    ("only train.txt", "train", lambda t, r, d: ["--data", only_train(t)], "has no valid split"),
    ("unseen valid word", "train", lambda t, r, d: ["--data", corpus(t, valid=["zebra"])],
     "not in the training vocabulary"),
    ("split shorter than a batch", "train",
     lambda t, r, d: ["--data", corpus(t, valid=["the cat"]), "--eval-batch-size", "10"], "too few"),
    ("missing char file", "train", lambda t, r, d: ["--level", "char", "--data", t / "nope.txt"], "no such"),
    # checkpoints
    ("truncated checkpoint", "evaluate", lambda t, r, d: [damaged(t, r, "truncated")], "cannot read checkpoint"),
    ("bit-flipped checkpoint", "evaluate", lambda t, r, d: [damaged(t, r, "bit-flipped")], "checkpoint"),
    ("pickle with code", "evaluate", lambda t, r, d: [malicious(t, r)], "cannot read checkpoint"),
    ("pickle with code, generate", "generate", lambda t, r, d: [malicious(t, r)], "cannot read checkpoint"),
    ("other vocabulary", "evaluate", lambda t, r, d: [r, "--data", corpus(t, train=["x y"], valid=["x"], test=["y"])],
     "different vocabulary"),
    ("newer format", "evaluate", lambda t, r, d: [damaged(t, r, "newer-format")], "newer than this code reads"),
    ("newer format, generate", "generate", lambda t, r, d: [damaged(t, r, "newer-format")], "newer than this code"),
    ("no run in directory", "evaluate", lambda t, r, d: [t], "has no model.pt"),
    ("no run in directory, generate", "generate", lambda t, r, d: [t], "has no model.pt"),
    ("save over an existing run", "train", lambda t, r, d: ["--data", d, "--save", r], "already holds a run"),
    ("tied with unequal sizes", "train", lambda t, r, d: ["--data", d, "--tied", "--emsize", "8", "--nhid", "16"],
     "--tied needs --nhid equal to --emsize"),
    ("resume of a missing folder", "train", lambda t, r, d: ["--resume", t / "nope"], "no run directory"),
    ("resume of no run", "train", lambda t, r, d: ["--resume", t], "has no last.pt"),
    # flags
    ("zero emsize", "train", lambda t, r, d: ["--data", d, "--emsize", "0"], "--emsize must be"),
    ("negative nhid", "train", lambda t, r, d: ["--data", d, "--nhid", "-4"], "--nhid must be"),
    ("zero layers", "train", lambda t, r, d: ["--data", d, "--nlayers", "0"], "--nlayers must be"),
    ("bptt 0", "train", lambda t, r, d: ["--data", d, "--bptt", "0"], "--bptt must be at least 1"),
    ("batch larger than the data", "train", lambda t, r, d: ["--data", d, "--batch-size", "100000"], "too few"),
    ("dropout 1", "train", lambda t, r, d: ["--data", d, "--dropout", "1"], "--dropout must be in [0, 1)"),
    ("negative awd dropout", "train", lambda t, r, d: ["--data", d, *AWD_TINY, "--dropout-input", "-0.1"],
     "--dropout-input must be in [0, 1)"),
    ("epochs 0", "train", lambda t, r, d: ["--data", d, "--epochs", "0"], "--epochs must be at least 1"),
    ("unknown preset", "train", lambda t, r, d: ["--preset", "gpt-5"], "invalid choice"),
    ("unknown model", "train", lambda t, r, d: ["--model", "mamba"], "invalid choice"),
    ("baseline flag with awd", "train", lambda t, r, d: ["--data", d, "--model", "awd-lstm", "--dropout", "0.2"],
     "--dropout does not apply to --model awd-lstm"),
    ("awd flag with baseline", "train", lambda t, r, d: ["--data", d, "--dropout-hidden", "0.2"],
     "--dropout-hidden does not apply to --model lstm"),
    ("negative lr", "train", lambda t, r, d: ["--data", d, "--lr", "-1"], "--lr must be positive"),
    ("negative clip", "train", lambda t, r, d: ["--data", d, "--clip", "-1"], "--clip must not be negative"),
    ("negative weight decay", "train", lambda t, r, d: ["--data", d, "--wdecay=-1e-6"],
     "--wdecay must not be negative"),
    ("not a number", "train", lambda t, r, d: ["--data", d, "--lr", "fast"], "invalid float value"),
    ("loss turns NaN", "train", lambda t, r, d: ["--data", d, "--lr", "1e30", "--clip", "0"], "lower --lr or --clip"),
    ("resume with a model flag", "train", lambda t, r, d: ["--resume", r, "--nhid", "64"], "cannot change on --resume"),
    ("temperature 0", "generate", lambda t, r, d: [r, "--temperature", "0"], "--temperature must be > 0"),
    ("temperature nan", "generate", lambda t, r, d: [r, "--temperature", "nan"], "--temperature must be"),
    ("temperature inf", "generate", lambda t, r, d: [r, "--temperature", "inf"], "--temperature must be"),
    ("top-p 0", "generate", lambda t, r, d: [r, "--top-p", "0"], "--top-p in (0, 1]"),
    ("top-p above 1", "generate", lambda t, r, d: [r, "--top-p", "1.5"], "--top-p in (0, 1]"),
    ("negative top-k", "generate", lambda t, r, d: [r, "--top-k", "-1"], "--top-k"),
    ("negative words", "generate", lambda t, r, d: [r, "--words", "-3"], "--words"),
    ("batch size 0, evaluate", "evaluate", lambda t, r, d: [r, "--batch-size", "0"], "--batch-size"),
    ("window 0, evaluate", "evaluate", lambda t, r, d: [r, "--window", "0"], "--window must be positive"),
    ("unknown split", "evaluate", lambda t, r, d: [r, "--split", "dev"], "invalid choice"),
    # run as on a CPU without bf16 kernels (see NO_BF16_CPU), where oneDNN's bf16 LSTM fails deep inside
    ("bf16 without bf16 CPU, train", "train", lambda t, r, d: ["--data", d, "--dtype", "bf16"], "AVX512-BF16 or AMX"),
    ("bf16 validation without bf16 CPU", "train", lambda t, r, d: ["--data", d, "--val-dtype", "bf16"],
     "--val-dtype bf16: bf16 needs"),
    # (evaluate.py and tune.py default to CUDA where it is visible, so the CPU is asked for)
    ("bf16 without bf16 CPU, evaluate", "evaluate", lambda t, r, d: [r, "--dtype", "bf16", "--device", "cpu"],
     "AVX512-BF16 or AMX"),
    ("bf16 without bf16 CPU, tune", "tune", lambda t, r, d: [r, "--method", "cache", "--out", t / "tuned",
                                                             "--dtype", "bf16", "--device", "cpu"],
     "AVX512-BF16 or AMX"),
]


def a_file(tmp):
    """A plain file, where the case expects a folder."""
    path = tmp / "a-file"
    path.write_text("not a folder\n")
    return path


def unreadable_metrics(tmp, run, line=2):
    """A copy of the run whose metrics.jsonl has garbage on `line`, an epoch last.pt has recorded."""
    import shutil
    copy = tmp / "unreadable-metrics"
    shutil.copytree(run, copy)
    lines = (copy / METRICS).read_text().splitlines(keepends=True)
    lines[line - 1] = '{"epoch": 2, "train_lo\x00ss": \n'
    (copy / METRICS).write_text("".join(lines))
    return copy


def tune_cache(t, r, *flags):
    return [r, "--method", "cache", "--out", t / "tuned", *flags]


# Issue 30: paths where a folder or file is expected, counts of 0 or less, unreadable metrics lines.
CASES += [
    ("save is a file", "train", lambda t, r, d: ["--data", d, "--save", a_file(t)], "is a file, not a folder"),
    ("save under a file", "train", lambda t, r, d: ["--data", d, "--save", a_file(t) / "run"],
     "is a file, not a folder"),
    ("resume of a checkpoint file", "train", lambda t, r, d: ["--resume", r / "last.pt"], "takes a run directory"),
    ("finetune of a checkpoint file", "train", lambda t, r, d: ["--finetune", r / "model.pt"], "takes a run directory"),
    ("finetune of no run", "train", lambda t, r, d: ["--finetune", t], "has no model.pt"),
    ("finetune of a missing folder", "train", lambda t, r, d: ["--finetune", t / "nope"], "no run directory"),
    ("finetune into an existing run", "train", lambda t, r, d: ["--finetune", r, "--save", r], "already holds a run"),
    ("resume over an unreadable recorded metrics line", "train", lambda t, r, d: ["--resume", unreadable_metrics(t, r)],
     "line 2 of"),
    ("evaluate a plain file", "evaluate", lambda t, r, d: [a_file(t)], "cannot read checkpoint"),
    ("json into a missing folder", "evaluate", lambda t, r, d: [r, "--json", t / "nope" / "x.json"], "does not exist"),
    ("json is a folder", "evaluate", lambda t, r, d: [r, "--json", t], "is a folder, not a file"),
    ("dyn-checkpoint is a folder", "evaluate", lambda t, r, d: [r, "--dynamic-eval", "--dyn-checkpoint", t],
     "is a folder, not a file"),
    ("dyn-stats under a file", "evaluate", lambda t, r, d: [r, "--dynamic-eval", "--dyn-stats", a_file(t) / "ms.pt"],
     "is a file, not a folder"),
    ("generate from a missing folder", "generate", lambda t, r, d: [t / "nope"], "no run directory"),
    ("generate from a plain file", "generate", lambda t, r, d: [a_file(t)], "cannot read checkpoint"),
    ("words 0", "generate", lambda t, r, d: [r, "--words", "0"], "--words"),
    ("chars 0", "generate", lambda t, r, d: [r, "--chars", "0"], "--words/--chars"),
    ("tune out is a file", "tune", lambda t, r, d: [r, "--method", "cache", "--out", a_file(t)],
     "is a file, not a folder"),
    ("tune of no run", "tune", lambda t, r, d: tune_cache(t, t), "has no model.pt"),
    ("tune dyn-stats in a missing folder", "tune",
     lambda t, r, d: [r, "--method", "dynamic", "--out", t / "o", "--dyn-stats", t / "nope" / "ms.pt"],
     "does not exist"),
    ("tune tokens 0", "tune", lambda t, r, d: tune_cache(t, r, "--tokens", "0"), "--tokens"),
    ("tune tokens negative", "tune", lambda t, r, d: tune_cache(t, r, "--tokens", "-5"), "--tokens"),
    ("tune window 0", "tune", lambda t, r, d: tune_cache(t, r, "--windows", "100", "0"), "--windows"),
    ("tune theta 0", "tune", lambda t, r, d: tune_cache(t, r, "--thetas", "0"), "--thetas"),
    ("tune dyn-bptt 0", "tune", lambda t, r, d: [r, "--method", "dynamic", "--out", t / "o", "--dyn-bptt", "0"],
     "--dyn-bptt"),
    ("tune stat batches 0", "tune",
     lambda t, r, d: [r, "--method", "dynamic", "--out", t / "o", "--dyn-stat-batches", "0"], "--dyn-stat-batches"),
    ("plot a plain file", "plot", lambda t, r, d: [a_file(t), "-o", t / "c.png"], "has no metrics.jsonl"),
    ("plot a folder with no run", "plot", lambda t, r, d: [t, "-o", t / "c.png"], "has no metrics.jsonl"),
    ("plot into a folder", "plot", lambda t, r, d: [r, "-o", t], "is a folder, not a file"),
    ("plot under a file", "plot", lambda t, r, d: [r, "-o", a_file(t) / "c.png"], "is a file, not a folder"),
    ("plot an unreadable metrics line", "plot", lambda t, r, d: [unreadable_metrics(t, r), "-o", t / "c.png"],
     "line 2 of"),
    ("bench json is a folder", "bench", lambda t, r, d: ["--json", t], "is a folder, not a file"),
    ("bench profile in a missing folder", "bench", lambda t, r, d: ["--profile", t / "nope" / "p.txt"],
     "does not exist"),
    ("bench steps 0", "bench", lambda t, r, d: ["--steps", "0"], "--steps"),
    ("bench windows negative", "bench", lambda t, r, d: ["--windows", "-1"], "--windows"),
    ("bench warmup negative", "bench", lambda t, r, d: ["--warmup", "-1"], "--warmup"),
    ("bench threads 0", "bench", lambda t, r, d: ["--threads", "0"], "--threads"),
    ("log interval 0", "train", lambda t, r, d: ["--data", d, "--log-interval", "0"], "--log-interval"),
    ("max batches 0", "train", lambda t, r, d: ["--data", d, "--max-batches", "0"], "--max-batches"),
]


RUNTIME = {"loss turns NaN"}  # cases that fail after training has started
NO_BF16_CPU = {c[0] for c in CASES if "without bf16 CPU" in c[0]}  # run with precision.bf16_is_fast False


def only_train(tmp):
    folder = corpus(tmp, "only-train")
    (folder / "valid.txt").unlink()
    (folder / "test.txt").unlink()
    return folder


def not_refused(*args, **kw):
    raise AssertionError("the benchmark started: its arguments were not refused first")


def test_the_matrix_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name, script, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(trained_run, tmp_path, capsys, monkeypatch, name, script, argv, message):
    run, data = trained_run
    before = digests(run)
    if name in NO_BF16_CPU:
        monkeypatch.setattr(precision, "bf16_is_fast", lambda device: False)
    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench, "bench_dtype", not_refused)
    args = [str(a) for a in argv(tmp_path, run, data)]
    if script == "train" and not {"--resume", "--finetune"} & set(args):  # the case's flags last, so that they win
        save = [] if "--save" in args else ["--save", str(tmp_path / "new-run")]
        args = [*save, *(TINY if "awd-lstm" not in args else []), *args]
    capsys.readouterr()
    try:
        code = SCRIPTS[script](args)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    if name in RUNTIME:  # progress bars came first
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert digests(run) == before
    assert not (tmp_path / "PWNED").exists()  # the pickle's code never ran
    assert not (tmp_path / "new-run" / "last.pt").exists()


def test_ctrl_c_twice_aborts_in_one_line_without_saving(trained_run, tmp_path, capsys, monkeypatch):
    """The second Ctrl-C raises KeyboardInterrupt out of the handler; main turns it into one line.
    (Two signals sent back to back to a process coalesce into one, hence in-process.)"""
    import signal
    with cli.StopOnInterrupt() as stop:
        stop.handle(signal.SIGINT, None)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    before = {k: v for k, v in digests(run).items() if k != "config.json"}  # a resume rewrites the config

    def interrupted_twice(run_obj, should_stop):
        raise KeyboardInterrupt

    monkeypatch.setenv("LM_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train, "train_epoch", interrupted_twice)
    capsys.readouterr()
    assert train.main(["--resume", str(run), "--epochs", "10"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: aborted by a second Ctrl-C, without saving; last.pt holds the run's latest checkpoint"]
    assert {k: v for k, v in digests(run).items() if k != "config.json"} == before


# Every count flag of every script: the scripts' parsers, and a command line each count flag joins.
PARSERS = {"train": config.get_parser, "evaluate": evaluate.get_parser, "generate": generate.get_parser,
           "tune": tune.get_parser, "bench": bench.get_parser, "plot": plot.get_parser}
COUNT_BASE = {"train": lambda t, r, d: ["--data", d, "--save", t / "new-run", *TINY], "evaluate": lambda t, r, d: [r],
              "generate": lambda t, r, d: [r], "tune": lambda t, r, d: tune_cache(t, r), "bench": lambda t, r, d: [],
              "plot": lambda t, r, d: [r, "-o", t / "c.png"]}
NOT_COUNTS = {"--seed"}
ZERO_MEANS = {"--top-k": "0, off", "--warmup": "0: none"}  # the help says what 0 means


def count_flags(parser):
    return [a.option_strings[0] for a in parser._actions
            if a.type in (int, cli.count, cli.count_or_zero) and a.option_strings[0] not in NOT_COUNTS]


def test_count_flags_whose_zero_means_something_say_so():
    seen = set()
    for make in (*PARSERS.values(), char_experiment.get_parser):
        for a in make()._actions:
            if a.option_strings and a.option_strings[0] in ZERO_MEANS and a.type in (int, cli.count_or_zero):
                assert ZERO_MEANS[a.option_strings[0]] in a.help
                seen.add(a.option_strings[0])
    assert seen == set(ZERO_MEANS)


@pytest.mark.parametrize("script, flag", [(s, f) for s, make in PARSERS.items() for f in count_flags(make())
                                          if f not in ZERO_MEANS])
def test_every_count_flag_refuses_zero_and_negatives(trained_run, tmp_path, capsys, monkeypatch, script, flag):
    run, data = trained_run
    monkeypatch.setattr(bench, "bench_dtype", not_refused)
    before = digests(run)
    for value in ("0", "-2"):
        capsys.readouterr()
        try:
            code = SCRIPTS[script]([str(a) for a in COUNT_BASE[script](tmp_path, run, data)] + [flag, value])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], err
    assert digests(run) == before
