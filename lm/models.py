"""The model families by name: their config dataclasses and how a config becomes a model.

model.py holds the recurrent baseline and AWD-LSTM, lm/qrnn.py the QRNN and lm/transformer.py the
Transformer; the last two build on model.py (AWDLSTM, LockedDropout, the embedding), so the table
of all four lives here, above them, and the library's users (checkpoints, train.py's config, the
training run, bench.py) import it rather than model.py.
"""
from lm.qrnn import QRNNConfig, QRNNModel
from lm.transformer import TransformerConfig, TransformerLM
from model import AWDLSTM, RNN_TYPES, AWDConfig, ModelConfig, RNNModel

MODEL_TYPES = (*RNN_TYPES, "awd-lstm", "qrnn", "transformer")
# model name -> (config dataclass, model class); every name of RNN_TYPES is the baseline's
FAMILIES = {"baseline": (ModelConfig, RNNModel), "awd-lstm": (AWDConfig, AWDLSTM), "qrnn": (QRNNConfig, QRNNModel),
            "transformer": (TransformerConfig, TransformerLM)}


def family(model):
    """The family of a --model name: "baseline" for the plain cells, else the name itself."""
    return "baseline" if model in RNN_TYPES else model


def config_class(model):
    return FAMILIES[family(model)][0]


def config_from_dict(d):
    """A checkpoint's model_config -> its family's config; configs saved before a "model" entry
    existed are the baseline's."""
    return config_class(d.get("model", "lstm")).from_dict(d)


def build_model(cfg, lstm_kernel="auto"):
    """The model of a config; lstm_kernel (see model.WeightDropLSTM) applies to AWD-LSTM only."""
    if isinstance(cfg, AWDConfig):
        return AWDLSTM(cfg, lstm_kernel)
    if lstm_kernel != "auto":
        raise ValueError(f"--lstm-kernel {lstm_kernel} applies to awd-lstm only, not to {cfg.model}")
    return FAMILIES[family(cfg.model)][1](cfg)
