"""The GPU-budget presets (awd-lstm-gpu, qrnn-gpu) against the recipes they cite, and the lr schedule."""
import pytest

from lm.config import ConfigError, resolve_config
from lm.optim import scheduled_lr

# sgugger/Adam-experiments, read by hand: README's language-model command
# "python train_rnn.py 5e-3 --wd=1.2e-6 --alpha=3 --beta=1.5", train_rnn.py's train_lm defaults
# (moms (0.8, 0.7), beta2 0.99, bs 100, bptt 70, clip 0.12, drops [0.6, 0.4, 0.5, 0.1, 0.2] passed
# as dropouti, dropout, wdrop, dropoute, dropouth; 400/1150/3 layers) and get_phases (div 10; 7.5,
# 37.5, 37.5 and 7.5 epochs: up, flat, down, cosine). Each entry: our config key -> its value there.
PUBLISHED = {
    "model": "awd-lstm", "emsize": 400, "nhid": 1150, "nlayers": 3, "tied": True,
    "optimizer": "adam", "lr": 0.005, "adam_betas": [0.8, 0.99], "wdecay": 0.0000012,
    "batch_size": 100, "bptt": 70, "clip": 0.12, "alpha": 3.0, "beta": 1.5,
    "dropout_input": 0.6, "dropout_output": 0.4, "dropout_weight": 0.5, "dropout_embedding": 0.1,
    "dropout_hidden": 0.2, "epochs": 90, "warmup": 0.0833333333333333,
}
# The recipe's lr (base 5e-3) at epochs of its 90: starts at 5e-4, reaches 5e-3 at 7.5, flat until
# 45, halfway down to 5e-4 at 63.75, 5e-4 at 82.5, half of that at 86.25 (cosine), 0 at 90.
PUBLISHED_LR = {0: 5e-4, 3.75: 2.75e-3, 7.5: 5e-3, 30: 5e-3, 45: 5e-3, 63.75: 2.75e-3, 82.5: 5e-4,
                86.25: 2.5e-4, 90: 0.0}


def test_gpu_preset_is_the_published_recipe_over_twelve_minutes():
    cfg, _, _ = resolve_config(["--preset", "awd-lstm-gpu", "--device", "cpu", "--dtype", "fp32"])
    for key, value in PUBLISHED.items():
        assert cfg[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert cfg["schedule"] == "onecycle-flat" and cfg["max_minutes"] == 12.0 and cfg["variable_bptt"]


# What qrnn-gpu takes from qrnn-wt2 (the original code's QRNN command); everything else is awd-lstm-gpu's.
QRNN_KEYS = ("model", "nhid", "nlayers", "seed", "dropout_input", "dropout_hidden", "dropout_weight",
             "dropout_output", "dropout_embedding", "emsize", "tied")


def test_qrnn_gpu_preset_is_the_gpu_recipe_with_the_qrnn_command_s_model():
    def config(preset):
        cfg, _, _ = resolve_config(["--preset", preset, "--device", "cpu", "--dtype", "fp32", "--save", "x"])
        return {k: v for k, v in cfg.items() if k != "preset"}
    qrnn, gpu, command = config("qrnn-gpu"), config("awd-lstm-gpu"), config("qrnn-wt2")
    assert qrnn == {**gpu, **{k: command[k] for k in QRNN_KEYS}}
    assert qrnn["model"] == "qrnn" and qrnn["dropout_weight"] == 0.1 and qrnn["lr"] == 0.005


def test_flat_onecycle_follows_the_recipes_phases():
    cfg, _, _ = resolve_config(["--preset", "awd-lstm-gpu", "--device", "cpu", "--dtype", "fp32"])
    for epoch, lr in PUBLISHED_LR.items():
        got = scheduled_lr(cfg["schedule"], cfg["lr"], epoch / 90, cfg["warmup"])
        assert got == pytest.approx(lr, abs=1e-12), epoch


def test_flat_onecycle_refuses_a_warmup_past_half():
    with pytest.raises(ConfigError, match="--warmup must be in"):
        resolve_config(["--preset", "awd-lstm-gpu", "--device", "cpu", "--dtype", "fp32", "--warmup", "0.5"])


def test_training_sets_the_flat_onecycle_lr(corpus_dir, tmp_path):
    """Each epoch's logged lr is the one set before its last batch: with --max-batches 5 that is at
    progress (epoch - 1 + 4/5) / epochs, one in each of the four phases."""
    import train
    from helpers import TINY
    from lm.checkpoint import read_metrics
    run = tmp_path / "run"
    assert train.main(["--data", str(corpus_dir), "--save", str(run), *TINY, "--optimizer", "adam", "--lr", "0.01",
                       "--schedule", "onecycle-flat", "--warmup", "0.25", "--epochs", "4", "--max-batches", "5"]) == 0
    lrs = [row["lr"] for row in read_metrics(run)]
    assert lrs == pytest.approx([scheduled_lr("onecycle-flat", 0.01, (e + 0.8) / 4, 0.25) for e in range(4)])
    assert len(set(lrs)) == 4
