"""Tests that pin the semantics of AWD-LSTM's techniques (Merity et al. 2017): the dropouts, weight
drop, tying, AR/TAR, variable BPTT, and the model as a whole. NT-ASGD, averaging, fine-tuning and
the lr schedules: tests/test_averaging.py."""
import json
import warnings

import pytest
import torch
from torch import nn

import train
from helpers import AWD_TINY, ROOT, metrics, scripts_in_process, step_by_step, write_corpus
from lm import training
from lm.config import LATER_FLAGS, model_config, resolve_config
from lm.models import build_model
from lm.optim import sample_seq_len, scaled_lr
from lm.precision import autocast
from model import (
    AWDLSTM,
    AWDConfig,
    LockedDropout,
    WeightDropLSTM,
    activation_regularization,
    embedding_dropout,
    temporal_activation_regularization,
)


def new_model(cfg, vocab_size):
    return build_model(model_config(cfg, vocab_size), cfg["lstm_kernel"])


# --- locked (variational) dropout -----------------------------------------------------------

def test_locked_dropout_mask_constant_over_time_and_differs_across_batch():
    torch.manual_seed(0)
    drop = LockedDropout(0.5).train()
    y = drop(torch.ones(30, 6, 40))  # (seq_len, batch, features)
    assert torch.equal(y, y[:1].expand_as(y))  # every step reuses step 0's mask
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1/(1-p)
    assert not all(torch.equal(y[0, 0], y[0, b]) for b in range(1, 6))  # one mask per sequence


def test_locked_dropout_is_identity_in_eval_and_per_step_when_unlocked():
    x = torch.randn(30, 6, 40)
    assert torch.equal(LockedDropout(0.5).eval()(x), x)
    torch.manual_seed(0)
    y = LockedDropout(0.5, locked=False).train()(torch.ones(30, 6, 40))
    assert not torch.equal(y[0], y[1])  # the ablation draws a new mask each step


# --- weight drop -----------------------------------------------------------------------------

@pytest.fixture
def lstm_calls(monkeypatch):
    """Record the weights of every fused LSTM call."""
    calls, real = [], torch.lstm

    def spy(x, hx, weights, *args):
        calls.append([w.detach().clone() for w in weights])
        return real(x, hx, weights, *args)

    monkeypatch.setattr(torch, "lstm", spy)
    return calls


def zero_state(batch, hidden, device="cpu"):
    return torch.zeros(1, batch, hidden, device=device), torch.zeros(1, batch, hidden, device=device)


def test_weight_drop_is_identity_in_eval_and_matches_nn_lstm():
    torch.manual_seed(0)
    layer = WeightDropLSTM(5, 7, weight_drop=0.5).eval()
    ref = nn.LSTM(5, 7)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, name + "_l0").copy_(getattr(layer, name))
    x = torch.randn(12, 3, 5)
    out, (_, c) = layer(x, zero_state(3, 7))
    ref_out, (_, ref_c) = ref(x, zero_state(3, 7))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(c, ref_c)


def test_weight_drop_changes_outputs_in_training_with_one_mask_for_all_steps(lstm_calls):
    torch.manual_seed(0)
    layer = WeightDropLSTM(5, 7, weight_drop=0.5).train()
    x = torch.randn(12, 3, 5)
    out, _ = layer(x, zero_state(3, 7))
    eval_out, _ = layer.eval()(x, zero_state(3, 7))
    assert not torch.allclose(out, eval_out)
    assert len(lstm_calls) == 2  # one fused call per forward: no Python loop over time
    w_ih, w_hh, b_ih, b_hh = lstm_calls[0]
    dropped = w_hh == 0
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(w_hh[~dropped], 2 * layer.weight_hh.detach()[~dropped])  # 1/(1-p)
    # Replaying the sequence step by step with that single dropped matrix gives the same output,
    # so every time step used the same mask.
    torch.testing.assert_close(out.detach(), step_by_step(x, w_ih, w_hh, b_ih, b_hh))


def test_weight_drop_gradients_reach_the_raw_weight(lstm_calls):
    torch.manual_seed(0)
    layer = WeightDropLSTM(5, 7, weight_drop=0.5).train()
    out, _ = layer(torch.randn(12, 3, 5), zero_state(3, 7))
    out.pow(2).sum().backward()
    dropped = lstm_calls[0][1] == 0
    grad = layer.weight_hh.grad
    assert grad is not None and grad[~dropped].abs().sum() > 0
    assert torch.all(grad[dropped] == 0)  # a dropped connection gets no gradient this step
    assert [n for n, _ in layer.named_parameters()] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]


def test_two_forwards_draw_different_weight_drop_masks(lstm_calls):
    layer = WeightDropLSTM(5, 7, weight_drop=0.5).train()
    x = torch.randn(4, 2, 5)
    layer(x, zero_state(2, 7))
    layer(x, zero_state(2, 7))
    assert not torch.equal(lstm_calls[0][1] == 0, lstm_calls[1][1] == 0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_weight_drop_runs_fused_cudnn_without_weight_warnings(dtype):
    layer = WeightDropLSTM(64, 128, weight_drop=0.5).cuda().train()
    with autocast("cuda", dtype):
        weights = layer.dropped_weights()
    base = weights[0].data_ptr()
    offsets = [w.data_ptr() - base for w in weights]
    sizes = [w.numel() * w.element_size() for w in weights]
    assert offsets == [sum(sizes[:i]) for i in range(4)]  # one contiguous buffer, cuDNN's order
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with autocast("cuda", dtype):
            out, _ = layer(torch.randn(50, 8, 64, device="cuda"), zero_state(8, 128, "cuda"))
        out.float().sum().backward()
        torch.cuda.synchronize()
    assert not [w for w in caught if "contiguous" in str(w.message) or "flatten" in str(w.message)]


# --- embedding dropout, tying, AR/TAR -------------------------------------------------------

def test_embedding_dropout_zeroes_whole_words_and_scales_the_rest():
    torch.manual_seed(0)
    weight = torch.randn(20, 6)
    tokens = torch.arange(20).repeat(5).view(10, 10)  # every word appears 5 times
    out = embedding_dropout(weight, tokens, 0.5, training=True)
    dropped_words = 0
    for word in range(20):
        rows = out[tokens == word]  # all occurrences of the word
        if rows.abs().sum() == 0:
            dropped_words += 1
        else:
            torch.testing.assert_close(rows, 2 * weight[word].expand_as(rows))
    assert 0 < dropped_words < 20
    assert torch.equal(embedding_dropout(weight, tokens, 0.5, training=False), weight[tokens])


def test_awd_tied_decoder_shares_storage_with_the_embedding():
    model = AWDLSTM(AWDConfig(vocab_size=50, emsize=8, nhid=16, nlayers=3))
    assert model.decoder.weight.data_ptr() == model.encoder.weight.data_ptr()
    assert [r.hidden_size for r in model.rnns] == [16, 16, 8]  # last layer sized for tying
    untied = AWDLSTM(AWDConfig(vocab_size=50, emsize=8, nhid=16, nlayers=3, tied=False))
    assert untied.decoder.weight.data_ptr() != untied.encoder.weight.data_ptr()


def test_ar_and_tar_match_hand_computed_values():
    h = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[3.0, 6.0]]])  # (seq_len 3, batch 1, 2)
    # AR: alpha * mean(h^2) = 2 * (1 + 4 + 9 + 16 + 9 + 36) / 6 = 25
    assert activation_regularization(h, 2.0).item() == pytest.approx(25.0)
    # TAR: beta * mean((h_t - h_{t-1})^2) = 1 * (4 + 4 + 0 + 4) / 4 = 3
    assert temporal_activation_regularization(h, 1.0).item() == pytest.approx(3.0)
    assert activation_regularization(h, 0.0).item() == 0.0


def test_ar_uses_the_dropped_output_and_tar_the_raw_output():
    torch.manual_seed(0)
    model = AWDLSTM(AWDConfig(vocab_size=30, emsize=8, nhid=12, nlayers=2)).train()
    out = model(torch.randint(0, 30, (6, 4)), model.init_hidden(4))
    assert torch.equal(out.logits, model.decoder(out.dropped))
    assert not torch.equal(out.raw, out.dropped)  # output dropout sits between them


# --- variable BPTT --------------------------------------------------------------------------

def test_variable_bptt_lengths_stay_within_bounds():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([sample_seq_len(70, g) for _ in range(20_000)], dtype=torch.float)
    assert lengths.min() >= 5 and lengths.max() <= 90
    half = (lengths < 52).float().mean().item()  # draws around bptt/2 = 35
    assert 0.04 < half < 0.06
    # N(70, 5) truncated to an int (as the paper's code does) has mean 69.5
    assert abs(lengths[lengths >= 52].mean().item() - 69.5) < 0.2
    assert sample_seq_len(4, g) >= 5  # never below 5


def test_lr_is_scaled_for_the_step_and_restored_after():
    torch.manual_seed(0)
    model = AWDLSTM(AWDConfig(vocab_size=30, emsize=8, nhid=12, nlayers=2, dropout_embedding=0,
                              dropout_input=0, dropout_hidden=0, dropout_output=0, dropout_weight=0))
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    with scaled_lr(opt, 0.25):
        assert opt.param_groups[0]["lr"] == 0.5
    assert opt.param_groups[0]["lr"] == 2.0
    # In a real step: the update is lr * factor * grad, and the lr is back afterwards.
    x, y = torch.randint(0, 30, (6, 4)), torch.randint(0, 30, (6, 4))
    cfg = {"clip": 0.0, "alpha": 0.0, "beta": 0.0, "dtype": "fp32"}
    before = model.decoder.bias.detach().clone()
    probe = AWDLSTM(model.cfg)
    probe.load_state_dict(model.state_dict())
    loss = nn.functional.cross_entropy(probe(x, probe.init_hidden(4)).logits.view(-1, 30), y.view(-1))
    loss.backward()
    training.train_step(model, x, y, model.init_hidden(4), opt, cfg, lr_factor=0.25)
    torch.testing.assert_close(model.decoder.bias.detach(), before - 0.5 * probe.decoder.bias.grad)
    assert opt.param_groups[0]["lr"] == 2.0


# --- the model as a whole: presets, parameter counts, ablation switches ---------------------

@pytest.mark.parametrize("preset, vocab, params", [
    ("awd-lstm-wt2", 33_278, 33_556_078),
    ("awd-lstm-ptb", 10_000, 24_221_600),
])
def test_preset_models_have_the_paper_parameter_counts(preset, vocab, params):
    cfg, _, _ = resolve_config(["--preset", preset])
    model = new_model(cfg, vocab)
    assert sum(p.numel() for p in model.parameters()) == params


def test_presets_hold_the_paper_settings_and_explicit_flags_override_them():
    wt2, _, _ = resolve_config(["--preset", "awd-lstm-wt2"])
    assert (wt2["epochs"], wt2["dropout_hidden"], wt2["seed"], wt2["lr"], wt2["bptt"]) == (750, 0.2, 1882, 30.0, 70)
    rates = ("dropout_input", "dropout_output", "dropout_weight", "dropout_embedding")
    assert tuple(wt2[k] for k in rates) == (0.65, 0.4, 0.5, 0.1)
    optimization = ("optimizer", "wdecay", "alpha", "beta", "clip")
    assert tuple(wt2[k] for k in optimization) == ("nt-asgd", 1.2e-6, 2.0, 1.0, 0.25)
    ptb, _, _ = resolve_config(["--preset", "awd-lstm-ptb"])
    keys = ("batch_size", "dropout_input", "dropout_hidden", "seed", "epochs")
    assert tuple(ptb[k] for k in keys) == (20, 0.4, 0.25, 141, 500)
    mine, _, _ = resolve_config(["--preset", "awd-lstm-wt2", "--dropout-hidden", "0.1", "--epochs", "3"])
    assert (mine["dropout_hidden"], mine["epochs"], mine["seed"]) == (0.1, 3, 1882)
    adam, _, _ = resolve_config(["--preset", "awd-lstm-adam"])
    assert (adam["optimizer"], adam["batch_size"], adam["clip"], adam["epochs"]) == ("adam", 100, 0.12, 90)


@pytest.mark.parametrize("preset, trial", [("lstm-cpu-2h", "p2-lstm650-sgd-plateau"),
                                           ("awd-lstm-cpu-2h", "p3-awd-adam-dropout-quarter")])
def test_budget_presets_are_the_trial_winners_with_a_two_hour_budget(preset, trial):
    cfg, _, _ = resolve_config(["--preset", preset])
    # The trial runs predate later flags; they had those flags' LATER_FLAGS values, as --resume reads them.
    saved = {**LATER_FLAGS, **json.loads((ROOT / "results" / "budget-trials" / f"{trial}-config.json").read_text())}
    run_only = {"save", "max_minutes", "checkpoint_every", "log_interval", "preset", "device", "dtype"}
    assert {k: v for k, v in cfg.items() if k not in run_only} == {k: v for k, v in saved.items() if k not in run_only}
    assert (cfg["max_minutes"], cfg["checkpoint_every"]) == (120.0, 10.0)


def test_every_technique_can_be_switched_off():
    off, _, _ = resolve_config(["--model", "awd-lstm", "--dropout-weight", "0", "--optimizer", "sgd",
                                      "--no-variable-bptt", "--dropout-embedding", "0", "--alpha", "0",
                                      "--beta", "0", "--no-locked-dropout", "--no-tied"])
    model = new_model(off, 50)
    assert all(r.weight_drop == 0 for r in model.rnns)
    assert not model.cfg.locked_dropout and not model.cfg.tied and model.cfg.dropout_embedding == 0
    assert off["optimizer"] == "sgd" and off["schedule"] == "plateau" and not off["variable_bptt"]
    assert off["alpha"] == off["beta"] == 0


def test_awd_lstm_learns_a_tiny_corpus(corpus_dir, tmp_path):
    run = tmp_path / "run"
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--epochs", "10", *AWD_TINY]) == 0
    rows = metrics(run)
    vocab = len(torch.load(run / "model.pt", weights_only=True)["vocab"])
    assert min(r["val_ppl"] for r in rows) < vocab / 4


def test_baseline_and_awd_flags_do_not_mix(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    assert train.main(["--data", str(folder), "--model", "lstm", "--dropout-weight", "0.5"]) == 2
    assert "--dropout-weight does not apply to --model lstm" in capsys.readouterr().err
    assert train.main(["--data", str(folder), "--model", "awd-lstm", "--dropout", "0.5"]) == 2
    assert "--dropout does not apply" in capsys.readouterr().err


def test_ablation_ladder_writes_a_table_of_its_rungs(corpus_dir, tmp_path, monkeypatch):
    from experiments import ablate
    scripts_in_process(monkeypatch)
    out = tmp_path / "ablation"
    assert ablate.main(["--data", str(corpus_dir), "--train-lines", "200", "--emsize", "8", "--nhid", "16",
                        "--nlayers", "2", "--epochs", "1", "--batch-size", "4", "--bptt", "10",
                        "--rungs", "none,full", "--out", str(out), "--runs", str(tmp_path / "runs"),
                        "--", "--lr", "5"]) == 0
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["rung"] for r in rows] == ["none", "full"]
    assert rows[0]["config"]["dropout_weight"] == 0 and not rows[0]["config"]["tied"]
    assert rows[1]["config"]["dropout_weight"] == 0.5 and rows[1]["config"]["variable_bptt"]
    assert all(r["val_ppl"] > 1 and r["test_ppl"] > 1 for r in rows)
    assert "| full |" in (out / "ablation.md").read_text()
    assert len((tmp_path / "runs" / "data" / "train.txt").read_text().splitlines()) == 200
