"""Wiring: each technique reaches the training step, the training loop and the model the way the
paper has it. Each test compares against a value computed independently (a replay with the same
masks, the same random draws, a hand-computed update), so a wrong wiring fails it."""
import time

import pytest
import torch
import torch.nn.functional as F

import model as model_module
import train
from data import batchify, load_corpus
from helpers import AWD_TINY, TINY, metrics, needs_bf16_cpu, spy_on_masks, step_by_step, weights
from lm import config, training, trainrun
from lm.checkpoint import load_checkpoint
from lm.head import detach_hidden
from lm.optim import sample_seq_len, scheduled_lr
from lm.scoring import Scores, evaluate
from model import AWDLSTM, AWDConfig, ModelConfig, RNNModel

# Distinct rates, so that a swapped or misplaced one shows.
RATES = {"dropout_embedding": 0.11, "dropout_input": 0.22, "dropout_hidden": 0.33, "dropout_output": 0.44,
         "dropout_weight": 0.55}
STEP_CFG = {"alpha": 2.0, "beta": 1.5, "clip": 0.05, "dtype": "fp32", "optimizer": "nt-asgd", "lr": 3.0,
            "wdecay": 0.01, "adam_betas": [0.9, 0.999]}


def awd(nlayers=3, locked=True):
    torch.manual_seed(0)
    return AWDLSTM(AWDConfig(vocab_size=30, emsize=6, nhid=10, nlayers=nlayers, locked_dropout=locked, **RATES))


def copy_of(net):
    twin = AWDLSTM(net.cfg)
    twin.load_state_dict(net.state_dict())
    return twin


def batch(steps=5, size=4):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 30, (steps, size), generator=g), torch.randint(0, 30, (steps, size), generator=g)


def reference_objective(net, x, y, hidden, alpha, beta, seed):
    """CE + alpha * mean(dropped^2) + beta * mean((raw[t] - raw[t-1])^2), with the masks that
    `seed` draws, through the plain decoder and F.cross_entropy."""
    torch.manual_seed(seed)
    out = net(x, hidden)
    ce = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
    return ce + alpha * out.dropped.pow(2).mean() + beta * (out.raw[1:] - out.raw[:-1]).pow(2).mean()


# --- the training step ---------------------------------------------------------------------------

def test_train_step_minimizes_ce_plus_ar_on_dropped_plus_tar_on_raw():
    net = awd().train()
    x, y = batch()
    expected = reference_objective(copy_of(net).train(), x, y, net.init_hidden(4), 2.0, 1.5, seed=5)
    torch.manual_seed(5)
    opt = training.make_optimizer(net, STEP_CFG)
    step = training.train_step(net, x, y, net.init_hidden(4), opt, STEP_CFG)
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert step.ce.item() < step.loss.item()


def test_one_update_is_clipped_sgd_with_weight_decay_at_the_scaled_lr():
    """w <- w - lr * factor * (g * min(1, clip / |g|) + wdecay * w), with g the gradient of the
    whole objective over every parameter (the tied matrix once)."""
    net = awd().train()
    x, y = batch()
    twin = copy_of(net).train()
    reference_objective(twin, x, y, twin.init_hidden(4), 2.0, 1.5, seed=5).backward()
    grads = {n: p.grad for n, p in twin.named_parameters()}
    norm = torch.cat([g.flatten() for g in grads.values()]).norm()
    assert norm > STEP_CFG["clip"]  # so that clipping acts
    scale = STEP_CFG["clip"] / norm
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    torch.manual_seed(5)
    training.train_step(net, x, y, net.init_hidden(4), training.make_optimizer(net, STEP_CFG), STEP_CFG, lr_factor=0.5)
    for name, p in net.named_parameters():
        update = grads[name] * scale + STEP_CFG["wdecay"] * before[name]
        torch.testing.assert_close(p.detach(), before[name] - 3.0 * 0.5 * update, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "nt-asgd", "adam", "adamw"])
def test_every_optimizer_gets_the_weight_decay(optimizer):
    cfg = {**STEP_CFG, "optimizer": optimizer}
    assert all(g["weight_decay"] == 0.01 for g in training.make_optimizer(awd(), cfg).param_groups)


def test_decoder_bias_starts_at_zero():
    assert torch.count_nonzero(awd().decoder.bias) == 0
    assert torch.count_nonzero(RNNModel(ModelConfig(vocab_size=30)).decoder.bias) == 0


# --- the model's masks ---------------------------------------------------------------------------

@pytest.fixture
def masks(monkeypatch):
    """Every dropout mask drawn, as (shape, p, mask), in order."""
    return spy_on_masks(monkeypatch, model_module)


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_awd_lstm_draws_each_mask_with_its_rate_shape_and_order(masks, locked):
    net = awd(locked=locked).train()
    x, _ = batch(steps=5, size=4)
    net(x, net.init_hidden(4))
    time = 1 if locked else 5  # locked masks are shared over the 5 steps

    def layer(h):
        return [((4 * h, h), 0.55), ((time, 4, h), 0.33)]

    expected = [((30, 1), 0.11), ((time, 4, 6), 0.22), *layer(10), *layer(10), ((24, 6), 0.55), ((time, 4, 6), 0.44)]
    assert [(shape, p) for shape, p, _ in masks] == expected
    masks.clear()
    net.eval()(x, net.init_hidden(4))
    assert masks == []  # nothing is dropped in eval mode


def test_awd_lstm_forward_equals_a_replay_with_its_masks(masks):
    """Embedding dropout on the matrix's rows, locked dropout on the input, between layers and on
    the output, and each layer's dropped hidden-to-hidden matrix, all applied where drawn."""
    net = awd().train()
    x, _ = batch(steps=5, size=4)
    out = net(x, net.init_hidden(4))
    m = [mask for _, _, mask in masks]
    with torch.no_grad():
        h = (net.encoder.weight * m[0])[x] * m[1]
        for i, rnn in enumerate(net.rnns):
            h = step_by_step(h, rnn.weight_ih, rnn.weight_hh * m[2 + 2 * i], rnn.bias_ih, rnn.bias_hh)
            if i < 2:
                h = h * m[3 + 2 * i]
        torch.testing.assert_close(out.raw, h, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.dropped, h * m[-1], rtol=1e-5, atol=1e-6)


def test_locked_dropout_scales_in_fp32_for_bf16_inputs():
    """1/(1-p) rounded to bf16 is off by up to 0.16%, the same way for every unit."""
    torch.manual_seed(0)
    for p in (0.1, 0.4, 0.65):
        y = model_module.LockedDropout(p).train()(torch.ones(3, 8, 64, dtype=torch.bfloat16))
        assert y.dtype == torch.float32
        zero, kept = y.unique().tolist()
        assert zero == 0 and kept == pytest.approx(1 / (1 - p), rel=1e-6)


# --- the training loop ---------------------------------------------------------------------------

def awd_run(corpus_dir, tmp_path, *flags):
    cfg, _, _ = config.resolve_config(["--data", str(corpus_dir), "--save", str(tmp_path / "run"),
                                       *AWD_TINY, *flags])
    return trainrun.Run(cfg)


@pytest.fixture
def recorded(monkeypatch):
    """record(run) -> a list that gets, for every batch of the loop, its input and target, the
    state it started from and the one it ended in, and the lr of its optimizer step."""
    def record(run):
        calls, real_loss, real_step = [], run.model.loss, run.optimizer.step

        def loss(x, y, hidden, workspace=None):
            ce, out = real_loss(x, y, hidden, workspace)
            calls.append({"x": x, "y": y, "in": detach_hidden(hidden),
                          "out": detach_hidden(out.hidden), "grad": [h.requires_grad for h, _ in hidden]})
            return ce, out

        def step(*args, **kw):
            calls[-1]["lr"] = run.optimizer.param_groups[0]["lr"]
            return real_step(*args, **kw)

        monkeypatch.setattr(run.model, "loss", loss)
        monkeypatch.setattr(run.optimizer, "step", step)
        return calls
    return record


def expected_lengths(seed, bptt, rows):
    """The variable-BPTT lengths of one epoch over `rows` rows, drawn as the paper does from a
    generator seeded like the run's; the last batch is cut at the end of the data."""
    g, lengths, position = torch.Generator().manual_seed(seed), [], 0
    while position < rows:
        lengths.append(min(sample_seq_len(bptt, g), rows - position))
        position += lengths[-1]
    return lengths


def test_an_epoch_walks_the_data_in_order_with_the_drawn_lengths(corpus_dir, tmp_path, recorded):
    run = awd_run(corpus_dir, tmp_path)
    calls = recorded(run)
    training.train_epoch(run, lambda: False)
    source = run.train_data
    assert [c["x"].size(0) for c in calls] == expected_lengths(run.cfg["seed"], 10, source.size(0) - 1)
    assert len(set(c["x"].size(0) for c in calls)) > 2  # the lengths do vary
    assert torch.equal(torch.cat([c["x"] for c in calls]), source[:-1])  # each row once, in order
    assert torch.equal(torch.cat([c["y"] for c in calls]), source[1:])


def test_each_step_scales_the_lr_by_its_length_over_bptt(corpus_dir, tmp_path, recorded):
    run = awd_run(corpus_dir, tmp_path)
    calls = recorded(run)
    training.train_epoch(run, lambda: False)
    assert [c["lr"] for c in calls] == pytest.approx([10.0 * c["x"].size(0) / 10 for c in calls])
    assert run.optimizer.param_groups[0]["lr"] == 10.0  # restored after every step


def test_the_state_carries_detached_from_each_batch_to_the_next(corpus_dir, tmp_path, recorded):
    run = awd_run(corpus_dir, tmp_path)
    calls = recorded(run)
    training.train_epoch(run, lambda: False)
    assert all(torch.count_nonzero(h) == 0 for layer in calls[0]["in"] for h in layer)  # a zero start
    for before, after in zip(calls, calls[1:], strict=False):
        assert not any(after["grad"])
        for (h_out, c_out), (h_in, c_in) in zip(before["out"], after["in"], strict=True):
            assert torch.equal(h_out, h_in) and torch.equal(c_out, c_in)
            assert torch.count_nonzero(h_in) > 0


def test_cosine_progress_counts_the_batches_actually_run(corpus_dir, tmp_path, recorded):
    run = awd_run(corpus_dir, tmp_path, "--optimizer", "sgd", "--schedule", "cosine", "--warmup", "0.1",
                  "--max-batches", "3", "--epochs", "2", "--no-variable-bptt")
    calls = recorded(run)
    for epoch in range(2):
        run.state = training.TrainState(lr=run.cfg["lr"], epoch=epoch)
        training.train_epoch(run, lambda: False)
    expected = [scheduled_lr("cosine", 10.0, (e + k / 3) / 2, 0.1) for e in range(2) for k in range(3)]
    assert [c["lr"] for c in calls] == pytest.approx(expected)


def test_a_time_budget_drives_the_schedule_when_it_ends_first(corpus_dir, tmp_path):
    run = awd_run(corpus_dir, tmp_path, "--schedule", "cosine", "--max-minutes", "2", "--epochs", "100")
    run.state.seconds, run.mark = 90.0, time.time()  # 90 s of a 120 s budget
    assert run.progress() == pytest.approx(0.75, abs=0.01)


# --- validation precision --------------------------------------------------------------------------

@needs_bf16_cpu
def test_a_bf16_run_validates_in_fp32(corpus_dir, tmp_path):
    run = tmp_path / "run"
    flags = [f if f != "fp32" else "bf16" for f in TINY]
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "1", *flags]) == 0
    from lm.checkpoint import load_model
    net, ckpt = load_model(run)
    assert ckpt["train_config"]["dtype"] == "bf16" and ckpt["train_config"]["val_dtype"] == "fp32"
    val = batchify(load_corpus(str(corpus_dir)).valid, 4)
    assert metrics(run)[0]["val_loss"] == evaluate(net, val, "fp32").loss


def test_validation_scores_in_val_dtype_whatever_the_training_dtype(corpus_dir, tmp_path, monkeypatch):
    """The wiring of the test above on any CPU: a bf16 run's validation pass is asked for fp32."""
    run = awd_run(corpus_dir, tmp_path)
    run.cfg = {**run.cfg, "dtype": "bf16", "val_dtype": "fp32"}
    asked = []
    monkeypatch.setattr(trainrun, "evaluate", lambda net, source, dtype: asked.append(dtype) or Scores(1.0, 0.5))
    assert run.validate().loss == 1.0 and asked == ["fp32"]


# --- fine-tuning -----------------------------------------------------------------------------------

@pytest.fixture
def scripted_validation(monkeypatch):
    """script(losses): validation returns these losses in turn; returns the list of the weights
    it is then given, one entry per call."""
    def script(losses):
        queue, seen = list(losses), []

        def fake(net, source, dtype="fp32", *args, **kw):
            seen.append({n: t.detach().clone() for n, t in net.state_dict().items()})
            return Scores(queue.pop(0), 0.5)

        monkeypatch.setattr(trainrun, "evaluate", fake)
        return seen
    return script


def test_fine_tuning_starts_from_model_pt_and_must_beat_its_start(corpus_dir, tmp_path, scripted_validation):
    run = tmp_path / "run"
    scripted_validation([1.0, 2.0])  # epoch 1 is the best: model.pt and last.pt differ
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "2", *AWD_TINY,
                       "--optimizer", "sgd"]) == 0
    best, last = weights(run, "model.pt"), weights(run)
    assert any(not torch.equal(best[k], last[k]) for k in best)
    seen = scripted_validation([1.5, 1.6, 1.7])  # the start, then two epochs that never beat it
    assert train.main(["--finetune", str(run), "--epochs", "2"]) == 0
    start = seen[0]
    assert all(torch.equal(start[k], best[k]) for k in best)  # the starting point is model.pt
    tuned = tmp_path / "run-finetune"
    assert not (tuned / "model.pt").exists()  # neither epoch beat the start, so nothing was saved
    assert [r["val_loss"] for r in metrics(tuned)] == [1.6, 1.7]
    assert load_checkpoint(tuned, "last.pt")["state"]["best_val_loss"] == 1.5


def test_fine_tuning_keeps_the_runs_sgd_lr_unless_given():
    sgd = {"optimizer": "nt-asgd", "lr": 7.0}
    assert config.finetune_config({}, {**config.DEFAULTS["plain"], **sgd}, "r")["lr"] == 7.0
    assert config.finetune_config({"lr": 2.0}, {**config.DEFAULTS["plain"], **sgd}, "r")["lr"] == 2.0
    adam = {**config.DEFAULTS["plain"], "optimizer": "adam", "lr": 3e-3}
    assert config.finetune_config({}, adam, "r")["lr"] == config.DEFAULT_LR["nt-asgd"]


# --- checks on --resume ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [(["--log-interval", "0"], "--log-interval must be at least 1"),
                                            (["--max-batches", "0"], "--max-batches must be positive"),
                                            (["--max-minutes", "-1"], "--max-minutes must be positive")])
def test_resume_checks_its_flags(trained_run, flags, message, capsys):
    run, _ = trained_run
    assert train.main(["--resume", str(run), *flags]) == 2
    assert message in capsys.readouterr().err


def test_every_mutant_still_applies():
    """tests/mutants.py edits code by its text: an edit whose text has changed would silently test
    nothing (mutants.py reports it only when run), so each must match exactly once."""
    from mutants import MUTANTS, ROOT
    matches = {name: (ROOT / path).read_text().count(old) for name, (path, old, _) in MUTANTS.items()}
    stale = {name: n for name, n in matches.items() if n != 1}
    assert not stale, f"mutants whose code changed (name: matches): {stale}"
