import torch

import generate
from data import EOS, UNK
from lm.checkpoint import load_model


def sample(run, *args, capsys):
    assert generate.main([str(run), *args]) == 0
    return capsys.readouterr().out


def test_same_seed_gives_the_same_sample(trained_run, capsys):
    run, _ = trained_run
    a = sample(run, "--words", "40", "--seed", "3", capsys=capsys)
    b = sample(run, "--words", "40", "--seed", "3", capsys=capsys)
    c = sample(run, "--words", "40", "--seed", "4", capsys=capsys)
    assert a == b and a != c


def greedy(model, prompt_ids, n):
    """Reference: feed the whole sequence each step and take the argmax."""
    seq = list(prompt_ids)
    for _ in range(n):
        logits = model(torch.tensor(seq).view(-1, 1), model.init_hidden(1)).logits
        seq.append(logits[-1, 0].argmax().item())
    return seq[len(prompt_ids):]


def test_low_temperature_approaches_argmax(trained_run):
    run, _ = trained_run
    model, ckpt = load_model(run)
    model.eval()
    stoi = {w: i for i, w in enumerate(ckpt["vocab"])}
    prompt = [stoi["the"], stoi["cat"]]
    g = torch.Generator().manual_seed(0)
    assert generate.generate(model, prompt, 25, temperature=1e-4, generator=g) == greedy(model, prompt, 25)
    g = torch.Generator().manual_seed(0)
    assert generate.generate(model, prompt, 25, top_k=1, generator=g) == greedy(model, prompt, 25)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(generate.filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(generate.filter_logits(logits[[3, 1, 0, 2]], top_p=0.5))
    assert kept.tolist() == [False, False, True, False]
    assert torch.isfinite(generate.filter_logits(logits, top_k=3)).tolist() == [True, True, True, False]


def test_eos_prints_as_a_newline():
    assert generate.detokenize(["a", "b", EOS, EOS, "c"]) == "a b\n\nc"


def test_unknown_prompt_words_become_unk_with_a_warning(trained_run, capsys):
    stoi = {"the": 0, UNK: 1}
    assert generate.encode_prompt("the zebra", stoi) == [0, 1]
    assert "zebra" in capsys.readouterr().err
    run, _ = trained_run
    out = sample(run, "--prompt", "the cat", "--words", "5", "--seed", "1", capsys=capsys)
    assert out.startswith("the cat ")
