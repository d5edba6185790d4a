"""NT-ASGD (Merity et al. 2017): the non-monotone trigger, the averaged weights, --average-start,
fine-tuning; and the lr schedules of the Adam recipe."""
import pytest
import torch
from torch import nn

import train
from helpers import AWD_TINY, metrics
from lm import optim, training, trainrun
from lm.config import resolve_config
from lm.optim import Averaging, nonmonotone_trigger

# --- NT-ASGD --------------------------------------------------------------------------------

# Validation losses of 13 epochs: progress, a stall, a jump. With nonmono = 5 the trigger first
# holds at epoch 12, whose 6.1 is worse than the best (5.0) of epochs 1-6, the ones more than 5
# epochs back. Epoch 7's 5.5 is worse than epoch 6's 5.0, but epoch 6 is inside the window then,
# so it does not trigger.
SCRIPT = [10, 9, 8, 7, 6, 5, 5.5, 5.4, 5.3, 5.2, 5.1, 6.1, 4.0]


def test_nonmonotone_trigger_fires_exactly_when_the_condition_first_holds():
    history, fired = [], []
    for epoch, val in enumerate(SCRIPT, 1):
        if nonmonotone_trigger(history, val, 5):
            fired.append(epoch)
        history.append(val)
    assert fired == [12]


def test_nt_asgd_starts_averaging_at_the_trigger_epoch_and_only_once():
    model = nn.Linear(2, 2)
    averaging = Averaging("trigger", 5)
    for epoch, val in enumerate(SCRIPT, 1):
        note, finished = averaging.end_of_epoch(model, val, epoch)
        assert averaging.active == (epoch >= 12) and not finished
        assert bool(note) == (epoch == 12)
    assert averaging.started == 12 and averaging.history == SCRIPT
    off = Averaging("off", 5)
    for epoch, val in enumerate(SCRIPT, 1):
        off.end_of_epoch(model, val, epoch)
    assert not off.active  # plain SGD never averages


def tiny_awd_run(corpus_dir, tmp_path, *flags):
    cfg, _, _ = resolve_config(["--data", str(corpus_dir), "--save", str(tmp_path / "run"), *AWD_TINY, *flags])
    return trainrun.Run(cfg)


def record_iterates(monkeypatch, model):
    """A list that receives a copy of the model's weights after every train_step from now on."""
    iterates, real_step = [], training.train_step

    def recording_step(*args, **kw):
        result = real_step(*args, **kw)
        iterates.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return result

    monkeypatch.setattr(training, "train_step", recording_step)
    return iterates


def assert_mean_of(averaging, iterates, count):
    """The running average holds exactly these `count` iterates, in plain mean."""
    assert averaging.count == len(iterates) == count
    for name, avg in averaging.average.items():
        torch.testing.assert_close(avg, torch.stack([it[name] for it in iterates]).mean(0))


def test_averaged_weights_equal_the_mean_of_the_iterates_since_the_trigger(corpus_dir, tmp_path, monkeypatch):
    run = tiny_awd_run(corpus_dir, tmp_path, "--max-batches", "6")
    model, iterates = run.model, record_iterates(monkeypatch, run.model)
    training.train_epoch(run, lambda: False)
    run.averaging.start(model, epoch=1)  # the trigger: iterates from here on are averaged
    run.state = training.TrainState(lr=run.cfg["lr"], epoch=1)
    training.train_epoch(run, lambda: False)
    assert_mean_of(run.averaging, iterates[6:], 6)

    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with run.averaging.weights(model):  # evaluation sees the average ...
        for name, p in model.named_parameters():
            assert torch.equal(p, run.averaging.average[name])
    for name, p in model.named_parameters():  # ... and training continues from the raw weights
        assert torch.equal(p, raw[name])


def test_average_start_averages_the_iterates_from_its_fraction_of_the_plan(corpus_dir, tmp_path, monkeypatch):
    """--average-start 0.35 over 2 epochs of 5 batches: progress before step k (1-based) is
    (k - 1) / 10, so the average holds the iterates after steps 5..10, with any optimizer."""
    run = tiny_awd_run(corpus_dir, tmp_path, "--optimizer", "adam", "--epochs", "2", "--max-batches", "5",
                       "--average-start", "0.35")
    iterates = record_iterates(monkeypatch, run.model)
    training.train_epoch(run, lambda: False)
    assert run.averaging.mode == "scheduled" and run.averaging.started == 0 and run.averaging.count == 1
    run.state = training.TrainState(lr=run.cfg["lr"], epoch=1)
    training.train_epoch(run, lambda: False)
    assert_mean_of(run.averaging, iterates[4:], 6)


@pytest.fixture
def trigger_after_epoch_2(monkeypatch):
    """Make the non-monotone criterion hold at the end of epoch 2 (when the history holds one
    earlier loss), so that short runs exercise averaging."""
    monkeypatch.setattr(optim, "nonmonotone_trigger", lambda history, val, nonmono: len(history) == 1)


def test_after_the_trigger_evaluation_and_model_pt_use_the_averaged_weights(
        corpus_dir, tmp_path, trigger_after_epoch_2):
    from data import batchify, load_corpus
    from lm.checkpoint import load_model
    from lm.scoring import evaluate
    run = tmp_path / "run"
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "4", *AWD_TINY]) == 0
    rows = metrics(run)
    assert [r["averaged"] for r in rows] == [False, False, True, True]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["averaging"]["started"] == 2 and last["averaging"]["count"] > 0
    model, _ = load_model(run / "last.pt")
    val = batchify(load_corpus(str(corpus_dir)).valid, 4)
    raw_loss = evaluate(model, val).loss
    with torch.no_grad():  # by parameter, as the average is kept (the tied matrix once)
        for name, p in model.named_parameters():
            p.copy_(last["averaging"]["average"][name])
    assert evaluate(model, val).loss == rows[-1]["val_loss"]  # the logged loss is the average's
    assert raw_loss != rows[-1]["val_loss"]
    best = min(rows, key=lambda r: r["val_loss"])
    best_model, _ = load_model(run)
    assert evaluate(best_model, val).loss == best["val_loss"]


def test_resume_after_the_trigger_reproduces_an_uninterrupted_run(corpus_dir, tmp_path, trigger_after_epoch_2):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--data", str(corpus_dir), *AWD_TINY]
    assert train.main([*common, "--save", str(straight), "--epochs", "4"]) == 0
    assert train.main([*common, "--save", str(split), "--epochs", "3"]) == 0
    assert train.main(["--resume", str(split), "--epochs", "4"]) == 0
    assert metrics(split) == metrics(straight)
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (split, straight))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["averaging"]["average"]:
        assert torch.equal(a["averaging"]["average"][key], b["averaging"]["average"][key]), key
    assert a["averaging"]["count"] == b["averaging"]["count"]


def test_finetune_averages_from_the_start_and_stops_on_the_criterion(corpus_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "2", *AWD_TINY,
                       "--optimizer", "sgd"]) == 0
    monkeypatch.setattr(optim, "nonmonotone_trigger", lambda history, val, nonmono: len(history) == 2)
    assert train.main(["--finetune", str(run), "--lr", "5", "--epochs", "10"]) == 0
    tuned = run.parent / "run-finetune"
    rows = metrics(tuned)
    assert len(rows) == 3 and all(r["averaged"] for r in rows)  # stopped by the criterion
    last = torch.load(tuned / "last.pt", weights_only=True)
    assert last["averaging"]["started"] == 0 and last["state"]["finished"]
    assert last["train_config"]["optimizer"] == "nt-asgd" and last["train_config"]["finetune"] == str(run)
    cfg, ckpt, mode = resolve_config(["--resume", str(tuned)])  # resumed, it is still fine-tuning
    assert trainrun.Run(cfg, ckpt, mode).averaging.mode == "finetune"
    del ckpt["averaging"]["mode"]  # as in checkpoints saved before the mode was kept
    assert trainrun.Run(cfg, ckpt, mode).averaging.mode == "finetune"


def test_cosine_and_onecycle_schedules_warm_up_then_decay():
    from lm.optim import scheduled_lr
    assert scheduled_lr("cosine", 1.0, 0.0, 0.1) == 0.0
    assert scheduled_lr("cosine", 1.0, 0.05, 0.1) == pytest.approx(0.5)
    assert scheduled_lr("cosine", 1.0, 0.1, 0.1) == pytest.approx(1.0)
    assert scheduled_lr("cosine", 1.0, 0.55, 0.1) == pytest.approx(0.5)
    assert scheduled_lr("cosine", 1.0, 1.0, 0.1) == pytest.approx(0.0)
    assert scheduled_lr("onecycle", 1.0, 0.0, 0.25) == pytest.approx(1 / 25)
    assert scheduled_lr("onecycle", 1.0, 0.25, 0.25) == pytest.approx(1.0)
    assert scheduled_lr("onecycle", 1.0, 1.0, 0.25) == pytest.approx(1e-4)


def test_adam_recipe_runs_with_its_schedule(corpus_dir, tmp_path):
    run = tmp_path / "run"
    sizes = ["--emsize", "16", "--nhid", "32", "--nlayers", "2", "--batch-size", "8", "--bptt", "10",
             "--eval-batch-size", "4", "--device", "cpu", "--lr", "0.01"]
    assert train.main(["--preset", "awd-lstm-adam", "--data", str(corpus_dir), "--save", str(run),
                       "--epochs", "3", *sizes]) == 0
    rows = metrics(run)
    assert rows[-1]["val_ppl"] < rows[0]["val_ppl"]
    lrs = [r["lr"] for r in rows]  # the lr at each epoch's end, on its way down after the warm-up
    assert lrs[0] < 0.01 and lrs[-1] < 1e-5
