import json

import pytest
import torch

import train
from helpers import TINY
from lm.models import build_model
from model import RNN_TYPES, ModelConfig, RNNModel


@pytest.mark.parametrize("model", RNN_TYPES)
def test_each_model_type_learns_a_tiny_corpus(corpus_dir, tmp_path, model):
    run = tmp_path / "run"
    assert train.main(["--data", str(corpus_dir), "--save", str(run), "--model", model,
                       "--epochs", "6", *TINY]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vocab = len(torch.load(run / "model.pt", weights_only=True)["vocab"])
    assert len(rows) == 6
    # The grammar allows perplexity ~2; a model that learned nothing sits near the vocabulary size.
    assert min(r["val_ppl"] for r in rows) < vocab / 4
    assert rows[-1]["train_ppl"] < rows[0]["train_ppl"]


@pytest.mark.parametrize("model", RNN_TYPES)
def test_forward_shapes_and_hidden_state(model):
    m = RNNModel(ModelConfig(vocab_size=30, model=model, emsize=8, nhid=8, nlayers=2))
    hidden = m.init_hidden(3)
    logits, hidden, raw, dropped = m(torch.randint(0, 30, (5, 3)), hidden)
    assert logits.shape == (5, 3, 30) and raw.shape == dropped.shape == (5, 3, 8)
    states = hidden if model == "lstm" else (hidden,)
    assert all(h.shape == (2, 3, 8) for h in states)


def test_tied_decoder_shares_storage_with_the_embedding():
    m = RNNModel(ModelConfig(vocab_size=30, emsize=8, nhid=8, tied=True))
    assert m.decoder.weight.data_ptr() == m.encoder.weight.data_ptr()
    assert sum(p.numel() for p in m.parameters()) < sum(
        p.numel() for p in RNNModel(ModelConfig(vocab_size=30, emsize=8, nhid=8)).parameters())


def test_tying_with_mismatched_sizes_is_a_clear_error():
    with pytest.raises(ValueError, match="--tied needs --nhid equal to --emsize"):
        ModelConfig(vocab_size=30, emsize=8, nhid=16, tied=True)


def test_config_round_trips_through_a_dict():
    cfg = ModelConfig(vocab_size=30, model="gru", emsize=8, nhid=8, tied=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("tied", [True, False])
def test_the_baselines_lstm_in_our_recurrence_equals_nn_lstm(tied):
    """RNNModel.lstm_kernel("own") (dynamic evaluation's) runs the LSTM's layers in
    recurrence.lstm_sequence from nn.LSTM's weights: the same loss, state and gradients, layer by
    layer (a nonzero state in, so each layer must get its own)."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(model="lstm", vocab_size=40, emsize=12, nhid=12, nlayers=3, tied=tied)).eval()
    tokens = torch.randint(0, 40, (6, 2))
    hidden = tuple(torch.randn(3, 2, 12) for _ in range(2))

    def run():
        loss, out = net.loss(tokens[:-1], tokens[1:], hidden)
        return (loss, *out.hidden, *torch.autograd.grad(loss, list(net.parameters())))

    plain = run()
    with net.lstm_kernel("own"):
        assert net.own_kernel
        ours = run()
    assert not net.own_kernel  # as before, after the body
    for p, o in zip(plain, ours, strict=True):
        torch.testing.assert_close(o, p, rtol=1e-5, atol=1e-6)


def test_a_gru_has_one_kernel():
    net = build_model(ModelConfig(model="gru", vocab_size=40, emsize=12, nhid=12))
    with net.lstm_kernel("own"):
        assert not net.own_kernel
