"""What a user runs, on a CUDA GPU: training a tiny baseline and a tiny AWD-LSTM in fp32, bf16 and
fp16, resuming a run stopped mid-epoch, scoring (plain, with the cache, with dynamic evaluation)
against the same scores on the CPU, sampling, and one process under torchrun (NCCL). All marked
cuda: skipped where PyTorch sees no GPU, and run on their own with

    python -m pytest -m cuda

Tolerances against the CPU: cuDNN may run fp32 LSTMs with TF32 tensor cores (torch's default
allows it for cuDNN), and embedding gradients are summed with atomics in no fixed order, so fp32
results agree with the CPU's to about 1e-3, not bit for bit. bf16 and fp16 round the logits, so
their losses agree to about 1e-2 (the README's "3rd-4th digit")."""
import json
import warnings

import pytest
import torch
from test_distributed import torchrun

import evaluate
import generate
import train
from helpers import AWD_TINY, TINY, assert_same_weights, metrics, train_once, weights, write_corpus
from lm import training
from lm.precision import bf16_is_fast

pytestmark = pytest.mark.cuda

FP32_REL = 5e-3  # fp32 on cuDNN (TF32) against the CPU: losses
HALF_REL = 2e-2  # bf16 or fp16 autocast against fp32 on the CPU: losses


def on_cuda(flags, dtype="fp32"):
    """A tiny run's flags with --device cuda and --dtype dtype."""
    flags = list(flags)
    flags[flags.index("--device") + 1] = "cuda"
    flags[flags.index("--dtype") + 1] = dtype
    return flags


def skip_unless_native(dtype):
    if dtype == "bf16" and not bf16_is_fast("cuda"):
        pytest.skip("bf16 is not native on this GPU (compute capability below 8.0)")


def weight_warnings(caught):
    """cuDNN's complaints about weights that are not one contiguous buffer."""
    return [str(w.message) for w in caught if "contiguous" in str(w.message) or "flatten" in str(w.message)]


# AWD-LSTM with Adam (fused, which fp16's scaler drives through its own path): on the CPU these
# reach val ppl 3.2 -> 2.1 (baseline) and 12 -> 3.4 (AWD-LSTM) in three epochs.
LEARNERS = {"baseline": TINY, "awd-lstm": [*AWD_TINY, "--optimizer", "adam", "--lr", "0.01"]}


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kind", LEARNERS)
def test_a_tiny_model_learns_on_cuda(corpus_dir, tmp_path, kind, dtype):
    """Three epochs on the grammar corpus (about 20 words; a perplexity near 2 is reachable):
    validation ends far below the uniform guess and below its first epoch, cuDNN gets its
    weights packed (no warning), and fp16 keeps its loss scaler in the checkpoint."""
    skip_unless_native(dtype)
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "3",
                           *on_cuda(LEARNERS[kind], dtype)]) == 0
    rows = metrics(run)
    assert rows[-1]["val_ppl"] < min(6.0, rows[0]["val_ppl"])
    assert not weight_warnings(caught)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["train_config"]["dtype"] == dtype and (ckpt["scaler"] is not None) == (dtype == "fp16")


def test_fp32_training_on_cuda_follows_the_cpu(corpus_dir, tmp_path):
    """The baseline without dropout (no random draws), one epoch on each device."""
    args = ["--data", str(corpus_dir), "--epochs", "1"]
    assert train.main([*args, "--save", str(tmp_path / "cpu"), *TINY]) == 0
    assert train.main([*args, "--save", str(tmp_path / "cuda"), *on_cuda(TINY)]) == 0
    cpu, gpu = metrics(tmp_path / "cpu")[0], metrics(tmp_path / "cuda")[0]
    for key in ("train_loss", "val_loss"):
        assert gpu[key] == pytest.approx(cpu[key], rel=FP32_REL), key


def train_stopped_at_step(args, step, monkeypatch):
    """train.main(args) with a Ctrl-C during its `step`-th training step; returns its exit code."""
    import signal
    real_step, calls = training.train_step, []

    def step_then_ctrl_c(*a, **kw):
        calls.append(1)
        if len(calls) == step:
            signal.raise_signal(signal.SIGINT)
        return real_step(*a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(training, "train_step", step_then_ctrl_c)
        return train.main(args)


def same_runs(a, b):
    wa, wb = weights(a), weights(b)
    return metrics(a) == metrics(b) and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_a_run_stopped_mid_epoch_on_cuda_resumes_to_the_uninterrupted_run(corpus_dir, tmp_path, monkeypatch, dtype):
    """AWD-LSTM with every dropout on (the CUDA generator's state must come back), stopped in its
    7th step and resumed. Bit for bit where two uninterrupted runs are identical (cuDNN and the
    atomics happened to be deterministic), else to the tolerance that separates those two."""
    common = ["--data", str(corpus_dir), *on_cuda(AWD_TINY, dtype), "--epochs", "2"]
    first, second, stopped = tmp_path / "first", tmp_path / "second", tmp_path / "stopped"
    assert train.main([*common, "--save", str(first)]) == 0
    assert train.main([*common, "--save", str(second)]) == 0
    assert train_stopped_at_step([*common, "--save", str(stopped)], 7, monkeypatch) == 130
    assert torch.load(stopped / "last.pt", weights_only=True)["hidden"] is not None
    assert train.main(["--resume", str(stopped)]) == 0
    if same_runs(first, second):
        assert metrics(stopped) == metrics(first)
        assert_same_weights(weights(stopped), weights(first))
    else:
        for got, want in zip(metrics(stopped), metrics(first), strict=True):
            assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-3)
        for name, w in weights(first).items():
            torch.testing.assert_close(weights(stopped)[name], w, rtol=0, atol=1e-3)


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory):
    """A tiny baseline and a tiny AWD-LSTM trained on the CPU, scored on both devices."""
    return {"baseline": train_once(tmp_path_factory, "baseline", lambda b: write_corpus(b / "corpus"),
                                   ["--epochs", "2", *TINY])[0],
            "awd-lstm": train_once(tmp_path_factory, "awd", lambda b: write_corpus(b / "corpus"),
                                   ["--epochs", "2", *AWD_TINY])[0]}


METHODS = {"plain": [],
           "cache": ["--cache", "--cache-window", "50", "--cache-theta", "0.5", "--cache-lambda", "0.1"],
           "dynamic": ["--dynamic-eval", "--dyn-lr", "1e-3", "--dyn-stat-batches", "3"]}


def score(run, out, *flags):
    assert evaluate.main([str(run), "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["baseline", "awd-lstm"])
def test_scores_on_cuda_agree_with_the_cpu(cpu_runs, tmp_path, kind, method):
    run = cpu_runs[kind]
    cpu = score(run, tmp_path / "cpu.json", "--device", "cpu", *METHODS[method])
    gpu = score(run, tmp_path / "gpu.json", "--device", "cuda", *METHODS[method])
    assert gpu["tokens"] == cpu["tokens"]
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=FP32_REL)
    if method == "cache":
        assert gpu["without_cache"]["loss"] == pytest.approx(cpu["without_cache"]["loss"], rel=FP32_REL)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_scores_on_cuda_agree_with_fp32(cpu_runs, tmp_path, capsys, dtype):
    skip_unless_native(dtype)
    run = cpu_runs["awd-lstm"]
    cpu = score(run, tmp_path / "cpu.json", "--device", "cpu", *METHODS["cache"])
    gpu = score(run, tmp_path / "gpu.json", "--device", "cuda", "--dtype", dtype, *METHODS["cache"])
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=HALF_REL)
    assert gpu["without_cache"]["loss"] == pytest.approx(cpu["without_cache"]["loss"], rel=HALF_REL)
    capsys.readouterr()
    code = evaluate.main([str(run), "--device", "cuda", "--dtype", "fp16", *METHODS["dynamic"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "flush to zero" in err[0]  # fp16 gradients need loss scaling


def test_sampling_on_cuda_draws_the_cpus_sample(cpu_runs, capsys):
    """The same seed draws the same words: the probabilities differ from the CPU's in the last
    digits only, which moves a draw only if it falls that close to a boundary."""
    run = cpu_runs["awd-lstm"]
    samples = []
    for device in ("cpu", "cuda"):
        assert generate.main([str(run), "--device", device, "--words", "30", "--seed", "1",
                              "--prompt", "the cat"]) == 0
        samples.append(capsys.readouterr().out)
    assert samples[0] == samples[1] and len(samples[1].split()) > 10


def test_one_process_under_torchrun_trains_through_nccl(corpus_dir, tmp_path):
    """torchrun --nproc-per-node 1 on CUDA: the process group is NCCL's (train.py's only backend
    for CUDA), DistributedDataParallel averages over it, and the run equals plain python's to the
    fp32 tolerance."""
    args = ["--data", str(corpus_dir), *on_cuda(TINY), "--epochs", "1"]
    assert train.main([*args, "--save", str(tmp_path / "plain")]) == 0
    torchrun([*args, "--save", tmp_path / "nccl"], tmp_path, processes=1)
    ckpt = torch.load(tmp_path / "nccl" / "last.pt", weights_only=True)
    assert "ranks" in ckpt["rng"] and ckpt["train_config"]["device"] == "cuda"  # the distributed code ran
    plain, nccl = metrics(tmp_path / "plain")[0], metrics(tmp_path / "nccl")[0]
    assert nccl["val_loss"] == pytest.approx(plain["val_loss"], rel=FP32_REL)
