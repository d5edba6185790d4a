"""Precision and devices on every machine a user has: the dtype default per GPU generation, fp16's
loss scaling (run here on the CPU, where torch.amp.GradScaler also works) and its skipped steps,
the scaler's state across a resume, and the one-line refusals of a device or dtype that cannot run."""
import signal

import pytest
import torch
from test_wiring import STEP_CFG, awd, batch, copy_of

import evaluate
import generate
import train
import tune
from helpers import AWD_TINY, TINY, assert_same_weights, metrics, weights
from lm import cli, config, precision, training, trainrun
from lm.optim import LossScaler


def fake_gpu(monkeypatch, capability):
    """Make PyTorch report one CUDA GPU of this compute capability; like a T4 (7.5), it says that
    it supports bf16 whatever the capability, as torch.cuda.is_bf16_supported() does (emulated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.mark.parametrize("capability, dtype", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_bf16_is_the_default_only_on_gpus_that_run_it_natively(monkeypatch, capability, dtype):
    fake_gpu(monkeypatch, capability)
    assert precision.default_dtype("cuda") == dtype
    cfg, _, _ = config.resolve_config(["--device", "cuda"])  # the default device too, where CUDA is seen
    assert cfg["device"] == "cuda" and cfg["dtype"] == dtype


def test_other_accelerators_are_taken_where_pytorch_has_them_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("mps"))
    cli.check_device("mps")
    cfg, _, _ = config.resolve_config(["--device", "mps"])
    assert cfg["dtype"] == "fp32" and cli.default_device() != "mps"  # used only when asked for
    with pytest.raises(cli.UserError, match="sees no xpu device"):
        cli.check_device("xpu")
    with pytest.raises(cli.UserError, match="has not been verified"):
        precision.check_dtype("mps", "bf16")


REFUSALS = [
    ("train", ["--dtype", "fp16"], "--dtype fp16: fp16 (with loss scaling) is for CUDA GPUs"),
    ("train", ["--val-dtype", "fp16"], "--val-dtype fp16: fp16"),
    ("train", ["--device", "mps"], "--device mps, but PyTorch sees no mps device here"),
    ("train", ["--device", "gpu"], "--device gpu: Expected one of"),
    ("evaluate", ["--dtype", "fp16", "--device", "cpu"], "--dtype fp16: fp16 (with loss scaling) is for CUDA"),
    ("evaluate", ["--device", "xpu"], "--device xpu, but PyTorch sees no xpu device here"),
    ("tune", ["--method", "cache", "--dtype", "fp16", "--device", "cpu"], "--dtype fp16: fp16"),
    ("generate", ["--device", "mps"], "--device mps, but PyTorch sees no mps device here"),
]


@pytest.mark.parametrize("script, flags, message", REFUSALS, ids=[f"{s} {' '.join(f)}" for s, f, _ in REFUSALS])
def test_a_device_or_dtype_that_cannot_run_here_is_refused_in_one_line(trained_run, tmp_path, capsys, script,
                                                                        flags, message):
    run, data = trained_run
    if script == "train":
        args = ["--data", str(data), "--save", str(tmp_path / "new"), *TINY, *flags]
    else:
        args = [str(run), *flags, *(["--out", str(tmp_path / "tuned")] if script == "tune" else [])]
    main = {"train": train.main, "evaluate": evaluate.main, "tune": tune.main, "generate": generate.main}[script]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "new").exists()


def test_fp16_is_refused_for_gradients_without_loss_scaling_even_on_a_gpu(monkeypatch):
    fake_gpu(monkeypatch, (7, 5))
    precision.check_dtype("cuda", "fp16")
    with pytest.raises(cli.UserError, match="flush to zero"):
        precision.check_dtype("cuda", "fp16", unscaled_backward=True)
    precision.check_dtype("cuda", "bf16", unscaled_backward=True)


# --- the loss scaler, on the CPU ------------------------------------------------------------------

ADAM_CFG = {**STEP_CFG, "optimizer": "adam", "lr": 0.01}


def one_step(net, cfg, scaler, seed=5):
    torch.manual_seed(seed)  # the same dropout masks for every twin
    opt = training.make_optimizer(net, cfg)
    x, y = batch()
    return training.train_step(net, x, y, net.init_hidden(4), opt, cfg, scaler=scaler), opt


@pytest.mark.parametrize("cfg", [STEP_CFG, ADAM_CFG], ids=["sgd", "fused adam"])
def test_a_scaled_step_equals_the_unscaled_step_exactly(cfg):
    """The scale is a power of two, so scaling the loss and unscaling the gradients is exact: the
    update must equal the plain fp32 one bit for bit, clipping included (it acts: STEP_CFG's clip
    is below the gradient norm), which it does only if the gradients are unscaled before the clip."""
    net = awd().train()
    twin = copy_of(net).train()
    scaler = LossScaler("cpu", enabled=True)
    step, _ = one_step(net, cfg, scaler)
    one_step(twin, cfg, LossScaler("cpu", enabled=False))
    assert step.applied and scaler.state_dict()["scale"] == 2.0 ** 16
    assert_same_weights(net.state_dict(), twin.state_dict())


@pytest.mark.parametrize("cfg", [STEP_CFG, ADAM_CFG], ids=["sgd", "fused adam"])
def test_a_step_with_an_inf_gradient_is_skipped_and_the_scale_halved(cfg):
    net = awd().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.decoder.bias.register_hook(lambda g: torch.full_like(g, float("inf")))
    scaler = LossScaler("cpu", enabled=True)
    step, opt = one_step(net, cfg, scaler)
    assert not step.applied and scaler.state_dict()["scale"] == 2.0 ** 15
    assert_same_weights(net.state_dict(), before)
    steps = [int(s["step"]) for s in opt.state_dict()["state"].values() if "step" in s]
    assert steps == ([0] * len(steps))  # Adam counted no step (SGD keeps no state)


def poisoned_steps(monkeypatch, run, skip):
    """Run train_epoch with fp16's scaler on (here on the CPU) and the gradients of the steps
    numbered in `skip` (0-based) made inf; returns, per step, the weights before and after, the
    lr it ran at, its rows and whether it was applied."""
    run.scaler = LossScaler("cpu", enabled=True)
    calls, real_step = [], training.train_step

    def step(*args, **kw):
        model = run.model
        hook = model.decoder.bias.register_hook(lambda g: torch.full_like(g, float("inf"))) \
            if len(calls) in skip else None
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        lr = run.optimizer.param_groups[0]["lr"]
        result = real_step(*args, **kw)
        if hook:
            hook.remove()
        after = {n: p.detach().clone() for n, p in model.named_parameters()}
        calls.append({"before": before, "after": after, "lr": lr, "rows": args[1].size(0), "applied": result.applied})
        return result

    with monkeypatch.context() as patch:
        patch.setattr(training, "train_step", step)
        training.train_epoch(run, lambda: False)
    return calls


def test_a_skipped_step_counts_nowhere_but_its_rows_are_used_up(corpus_dir, tmp_path, monkeypatch):
    """Adam with a one-cycle schedule over one epoch and averaging from the first step; the 3rd
    step's gradients overflow. Against the same epoch without the overflow: the skipped step
    changes no weight, the average holds exactly the applied steps' weights, the lr schedule and
    the batch count do not move past it (every later step runs at the lr that the step before it
    had), and the loss sums leave it out; its rows are used up all the same."""
    flags = ["--optimizer", "adam", "--lr", "0.01", "--schedule", "onecycle", "--warmup", "0.5",
             "--average-start", "0", "--epochs", "1", "--no-variable-bptt"]
    plain = poisoned_steps(monkeypatch, tiny_run(corpus_dir, tmp_path / "a", flags), skip=())
    run = tiny_run(corpus_dir, tmp_path / "b", flags)
    calls = poisoned_steps(monkeypatch, run, skip={2})
    assert len(calls) == len(plain) and [c["applied"] for c in calls] == [i != 2 for i in range(len(calls))]
    assert_same_weights(calls[2]["after"], calls[2]["before"])
    assert_same_weights(calls[2]["after"], plain[1]["after"])
    assert [c["lr"] for c in calls] == [c["lr"] for c in plain[:3]] + [c["lr"] for c in plain[2:-1]]
    applied = [c for c in calls if c["applied"]]
    assert run.averaging.count == len(applied)
    for name, avg in run.averaging.average.items():
        torch.testing.assert_close(avg, torch.stack([c["after"][name] for c in applied]).mean(0))
    state, rows = run.state, sum(c["rows"] for c in calls)
    assert state.batches == len(applied) and state.position == rows and state.skipped_rows == calls[2]["rows"]
    assert state.train_tokens == (rows - calls[2]["rows"]) * run.cfg["batch_size"]


def tiny_run(corpus_dir, folder, flags):
    cfg, _, _ = config.resolve_config(["--data", str(corpus_dir), "--save", str(folder), *AWD_TINY, *flags])
    return trainrun.Run(cfg)


def gradients_beyond(monkeypatch, limit):
    """Every model that train.py builds from now on has each gradient entry above `limit` made
    inf, as fp16 does beyond its range (65504)."""
    real_build = trainrun.build_model

    def build(*args):
        model = real_build(*args)
        for p in model.parameters():
            p.register_hook(lambda g: torch.where(g.abs() > limit, float("inf"), g))
        return model

    monkeypatch.setattr(trainrun, "build_model", build)


def test_an_epoch_whose_every_step_was_skipped_is_a_one_line_error(corpus_dir, tmp_path, monkeypatch, capsys):
    gradients_beyond(monkeypatch, 0.0)
    monkeypatch.setattr(trainrun, "LossScaler", lambda device_type, enabled: LossScaler("cpu", True))
    assert train.main(["--data", str(corpus_dir), "--save", str(tmp_path / "run"), *TINY, "--epochs", "1"]) == 2
    assert "every step of epoch 1 had inf/NaN gradients" in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_scaler_state_is_saved_and_a_resume_continues_exactly(corpus_dir, tmp_path, monkeypatch):
    """Loss scaling forced on (on the CPU), with every gradient entry beyond fp16's range made
    inf as fp16 would: which steps are skipped then depends on the scale and its growth counter,
    so a run stopped mid-epoch and resumed takes the same steps as an uninterrupted one only if
    last.pt kept them."""
    gradients_beyond(monkeypatch, 65504)
    monkeypatch.setattr(trainrun, "LossScaler", lambda device_type, enabled: LossScaler(
        "cpu", True, init_scale=2.0 ** 20, growth_interval=3))  # it skips the first 2 steps here
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    common = ["--data", str(corpus_dir), *TINY, "--epochs", "2", "--max-batches", "10"]
    assert train.main([*common, "--save", str(straight)]) == 0
    real_step, calls = training.train_step, []

    def step_then_ctrl_c(*args, **kw):
        calls.append(1)
        if len(calls) == 7:  # a Ctrl-C arrives during the 7th step of epoch 1
            signal.raise_signal(signal.SIGINT)
        return real_step(*args, **kw)

    monkeypatch.setattr(training, "train_step", step_then_ctrl_c)
    assert train.main([*common, "--save", str(stopped)]) == 130
    monkeypatch.setattr(training, "train_step", real_step)
    saved = torch.load(stopped / "last.pt", weights_only=True)
    assert 0 < saved["state"]["skipped_rows"] and saved["state"]["batches"] < 7  # steps were skipped
    assert train.main(["--resume", str(stopped)]) == 0
    assert metrics(stopped) == metrics(straight)
    assert_same_weights(weights(stopped), weights(straight))
    assert torch.load(stopped / "last.pt", weights_only=True)["scaler"] == \
        torch.load(straight / "last.pt", weights_only=True)["scaler"]


def test_a_run_saved_before_fp16_resumes(trained_run, tmp_path):
    """last.pt as written before loss scaling existed: no "scaler" entry, no skipped_rows."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    del ckpt["scaler"], ckpt["state"]["skipped_rows"]
    torch.save(ckpt, run / "last.pt")
    assert train.main(["--resume", str(run), "--epochs", "5"]) == 0
    assert metrics(run)[-1]["epoch"] == 5
