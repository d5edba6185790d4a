"""What users rely on beyond each technique alone: NT-ASGD once its trigger holds again, the
batch-1 protocol of dynamic evaluation on every split, sampling options together, and the
last line of a file without a final newline."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

import evaluate
import generate
from data import EOS, load_corpus
from helpers import write_corpus
from lm.checkpoint import load_model
from lm.optim import Averaging


def test_nt_asgd_carries_its_average_on_when_the_trigger_holds_again():
    """Averaging starts at the end of epoch 3 (3.5 is worse than epoch 1's 3.0); at the end of
    epoch 4 the criterion holds again (4.0 > 2.0) and the average must go on: the mean of every
    iterate since the start, 4, 5, 6 and 7, not of those after the second trigger."""
    model = torch.nn.Linear(2, 1)
    averaging = Averaging("trigger", nonmono=1)

    def step(value):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        averaging.after_step(model)

    for epoch, (iterates, val_loss) in enumerate([([1.0], 3.0), ([2.0], 2.0), ([3.0], 3.5), ([4.0, 5.0], 4.0),
                                                  ([6.0, 7.0], 5.0)], start=1):
        for value in iterates:
            step(value)
        averaging.end_of_epoch(model, val_loss, epoch)
        if epoch == 3:
            assert averaging.started == 3
    assert (averaging.started, averaging.count) == (3, 4)
    with averaging.weights(model):
        assert all(torch.equal(p, torch.full_like(p, 5.5)) for p in model.parameters())
    assert all(torch.equal(p, torch.full_like(p, 7.0)) for p in model.parameters())  # the raw weights are back


@pytest.mark.parametrize("split", ["valid", pytest.param("train", marks=pytest.mark.slow)])
def test_dynamic_evaluation_uses_batch_1_on_every_split(trained_run, tmp_path, split):
    """The published protocol: by default dynamic evaluation scores valid and train at batch 1,
    as test; the numbers equal those of an explicit --batch-size 1 (at batch 10, the default of
    plain evaluation on these splits, the loss is 0.678 against 0.615 on valid)."""
    run, _ = trained_run
    flags = [str(run), "--split", split, "--dynamic-eval", "--dyn-stat-batches", "2", "--dyn-lr", "1e-3"]
    numbers = []
    for extra in ([], ["--batch-size", "1"]):
        assert evaluate.main([*flags, *extra, "--json", str(tmp_path / "out.json")]) == 0
        result = json.loads((tmp_path / "out.json").read_text())
        numbers.append((result["loss"], result["accuracy"], result["batch_size"]))
    assert numbers[0] == numbers[1]


class FixedLogits(torch.nn.Module):
    """A stand-in model whose next-token logits are always `logits`; carries state like a recurrent one."""

    context_window = None

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def init_hidden(self, batch):
        return None

    def forward(self, tokens, hidden):
        return SimpleNamespace(logits=self.logits.expand(tokens.size(0), 1, -1), hidden=None)


def sampled_distribution(logits, monkeypatch, **options):
    """The probabilities that generate.generate hands to torch.multinomial for its one draw."""
    seen = []
    real = torch.multinomial

    def multinomial(probs, n, generator=None):
        seen.append(probs.clone())
        return real(probs, n, generator=generator)

    monkeypatch.setattr(generate.torch, "multinomial", multinomial)
    generate.generate(FixedLogits(logits), [0], 1, generator=torch.Generator().manual_seed(0), **options)
    return seen[0]


LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0]


def by_hand(temperature, keep):
    """softmax(logits / temperature) over the tokens in `keep`, renormalized; 0 elsewhere."""
    weights = [math.exp(v / temperature) if i in keep else 0.0 for i, v in enumerate(LOGITS)]
    return torch.tensor([w / sum(weights) for w in weights])


@pytest.mark.parametrize("options, keep", [
    # At temperature 2 the probabilities are 0.37, 0.23, 0.18, 0.14, 0.08: the first three
    # reach 0.75 (the first two, 0.60, do not); at temperature 1 the first two would (0.77).
    ({"temperature": 2.0, "top_p": 0.75}, {0, 1, 2}),
    # At temperature 0.5: 0.83, 0.11, 0.04, ...: two reach 0.9; at temperature 1 it would take four.
    ({"temperature": 0.5, "top_p": 0.9}, {0, 1}),
    ({"temperature": 2.0, "top_k": 3}, {0, 1, 2}),
    ({"temperature": 0.5, "top_k": 2}, {0, 1}),
])
def test_temperature_scales_the_logits_before_top_p_or_top_k_filters(monkeypatch, options, keep):
    """The published convention (Hugging Face's too): divide by the temperature, then filter,
    then renormalize; compared with the distribution computed by hand."""
    probs = sampled_distribution(LOGITS, monkeypatch, **options)
    torch.testing.assert_close(probs, by_hand(options["temperature"], keep))


def test_a_split_without_a_final_newline_keeps_its_last_line_and_its_eos(tmp_path):
    """Each split's last line ends the file with no newline: it is read, with its <eos>, and the
    corpus equals the one whose files end in a newline."""
    lines = {"train": ["c d e", "a b c", "b c d"], "valid": ["a b", "d e"], "test": ["e d", "c a b"]}
    ended = write_corpus(tmp_path / "ended", lines["train"], lines["valid"], lines["test"])
    bare = tmp_path / "bare"
    bare.mkdir()
    for split, split_lines in lines.items():
        (bare / f"{split}.txt").write_text("\n".join(split_lines))
    a, b = load_corpus(str(bare)), load_corpus(str(ended))
    for split, split_lines in lines.items():
        words = [a.itos[i] for i in a.split(split).tolist()]
        assert words == [w for line in split_lines for w in [*line.split(), EOS]]
        assert torch.equal(a.split(split), b.split(split))
    assert a.itos == b.itos


def test_generate_reads_the_prompt_before_it_samples(trained_run, capsys):
    """generate.py --prompt at a temperature near 0 prints the prompt and then the greedy
    continuation of the prompt, computed by feeding the whole sequence at each step."""
    from test_generate import greedy
    run, _ = trained_run
    model, ckpt = load_model(run)
    model.eval()
    stoi = {w: i for i, w in enumerate(ckpt["vocab"])}
    assert generate.main([str(run), "--prompt", "the cat", "--words", "12", "--temperature", "1e-4",
                          "--seed", "0"]) == 0
    expected = generate.detokenize(["the", "cat"] + [ckpt["vocab"][i] for i in greedy(model, [stoi["the"],
                                                                                                 stoi["cat"]], 12)])
    assert capsys.readouterr().out == expected + "\n"
