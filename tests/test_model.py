import json

import pytest
import torch

import train
from helpers import TINY
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
