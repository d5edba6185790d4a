"""The continuous cache pointer (cache.py) against hand computations and a per-token reference."""
import json
import math

import pytest
import torch

import evaluate
from helpers import metrics
from lm import cache as cache_module
from lm import scoring
from lm.cache import PointerCache, cache_evaluate, mixture_scores
from model import AWDLSTM, AWDConfig


def tiny_model(vocab=40, seed=0):
    torch.manual_seed(seed)
    return AWDLSTM(AWDConfig(vocab_size=vocab, emsize=12, nhid=20, nlayers=2)).eval()


def reference(model, source, window, theta, lam, usable=lambda g: g > 0):
    """Mean loss and accuracy of the cache mixture, one token at a time from its definition: a
    one-hot sum over the previous `window` outputs of the column. usable(g) says whether target
    g of the column uses the cache (it also needs a non-empty memory)."""
    with torch.no_grad():
        out = model.features(source[:-1], model.init_hidden(source.size(1)))
        probs = torch.softmax(model.decoder(out.dropped).double(), -1)
    raw, targets, vocab = out.raw.double(), source[1:], probs.size(-1)
    nats = correct = 0.0
    for b in range(source.size(1)):
        for t in range(targets.size(0)):
            p = probs[t, b]
            lo = max(0, t - window)
            if usable(t) and t > lo:
                attention = torch.softmax(theta * raw[lo:t, b] @ raw[t, b], 0)
                p_cache = torch.zeros(vocab, dtype=torch.float64)
                for i, a in zip(range(lo, t), attention, strict=True):
                    p_cache[targets[i, b]] += a
                p = lam * p_cache + (1 - lam) * p
            nats -= math.log(p[targets[t, b]])
            correct += float(p.argmax() == targets[t, b])
    return nats / targets.numel(), correct / targets.numel()


def test_mixture_matches_a_hand_computation():
    """Three positions, two-dimensional outputs, vocabulary of three; the model's probabilities
    are uniform. Position 2 attends to positions 0 and 1 with scores theta * h_i.h_2 = 2, 1."""
    lam, theta = 0.25, 1.0
    cache = PointerCache(window=5, theta=theta, lam=lam)
    raw = torch.tensor([[[2.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]]])  # (T=3, batch=1, d=2)
    targets = torch.tensor([[1], [2], [1]])  # w_1, w_2, w_3: the word after each position
    log_probs = torch.full((3, 3), math.log(1 / 3))
    nats, correct = cache.score(raw, [(0, log_probs)], targets)
    # position 0: empty memory, p = 1/3; position 1: key 0 (next word 1), target 2: p_cache = 0;
    # position 2: keys 0, 1 with weights e^2/(e^2+e), e/(e^2+e), next words 1, 2; target 1.
    a0 = math.exp(2) / (math.exp(2) + math.exp(1))
    expected = [1 / 3, (1 - lam) / 3, lam * a0 + (1 - lam) / 3]
    assert -nats.item() == pytest.approx(sum(math.log(p) for p in expected), rel=1e-6)
    # argmaxes: position 0 ties (first wins: 0, wrong), position 1 puts lam on word 1 (wrong),
    # position 2 on word 1 (right)
    assert correct.item() == 1


@pytest.mark.parametrize("batch, window, eval_window", [(1, 7, 13), (2, 30, 9), (1, 100, 500)])
def test_evaluation_with_the_cache_equals_the_per_token_reference(batch, window, eval_window):
    """Memory carried across evaluation windows, a window shorter and longer than them, batch > 1."""
    model, theta, lam = tiny_model(), 0.7, 0.3
    source = torch.randint(0, 40, (120, batch), generator=torch.Generator().manual_seed(1))
    got = cache_evaluate(model, source, PointerCache(window, theta, lam), window=eval_window)
    loss, accuracy = reference(model, source, window, theta, lam)
    assert got.loss == pytest.approx(loss, rel=1e-5)
    assert got.accuracy == accuracy


def test_each_chunk_of_a_window_is_scored_at_its_own_positions(monkeypatch):
    """Windows of 9 time steps at batch 2 whose log-probabilities come in chunks of 3 time steps
    (6 rows): each chunk is mixed with its own positions' attention and scored against their
    targets."""
    monkeypatch.setattr(cache_module, "SCORE_ROWS", 6)
    model, theta, lam = tiny_model(), 0.7, 0.3
    source = torch.randint(0, 40, (60, 2), generator=torch.Generator().manual_seed(7))
    got = cache_evaluate(model, source, PointerCache(30, theta, lam), window=9)
    loss, accuracy = reference(model, source, 30, theta, lam)
    assert got.loss == pytest.approx(loss, rel=1e-5)
    assert got.accuracy == accuracy


def test_original_gaps_leave_out_the_first_window_and_each_chunk_start():
    """The original pointer.py: no cache for targets g <= window, nor where g is a multiple of its
    evaluation chunk."""
    model, theta, lam, window, chunk = tiny_model(), 0.7, 0.3, 10, 25
    source = torch.randint(0, 40, (101, 1), generator=torch.Generator().manual_seed(2))
    got = cache_evaluate(model, source, PointerCache(window, theta, lam, original_gaps=chunk), window=17)
    loss, accuracy = reference(model, source, window, theta, lam, lambda g: g > window and g % chunk != 0)
    assert got.loss == pytest.approx(loss, rel=1e-5)
    assert got.accuracy == accuracy


def test_a_position_never_sees_its_own_output_or_target():
    """All outputs equal, all targets distinct: no earlier position was followed by the current
    target, so p_cache(target) = 0 everywhere (attending to itself would give it mass)."""
    lam, T = 0.4, 6
    raw = torch.ones(T, 1, 3)
    targets = torch.arange(T)[:, None]
    log_probs = torch.full((T, 8), math.log(1 / 8))
    nats, _ = PointerCache(10, 1.0, lam).score(raw, [(0, log_probs)], targets)
    expected = math.log(1 / 8) + (T - 1) * math.log((1 - lam) / 8)  # the first has no memory
    assert -nats.item() == pytest.approx(expected, rel=1e-6)


def test_lambda_zero_gives_plain_evaluation_exactly():
    model = tiny_model()
    source = torch.randint(0, 40, (200, 1), generator=torch.Generator().manual_seed(3))
    assert cache_evaluate(model, source, PointerCache(50, 1.0, 0.0)) == scoring.evaluate(model, source)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_pass_with_the_cache_also_counts_the_model_alone_exactly(batch):
    """The model-alone sums that a cache keeps are a pass without the cache, bit for bit."""
    model = tiny_model()
    source = torch.randint(0, 40, (150, batch), generator=torch.Generator().manual_seed(6))
    source[::5] = 7
    cache = PointerCache(40, 1.0, 0.3)
    cached = cache_evaluate(model, source, cache, window=23)
    plain = scoring.evaluate(model, source, window=23)
    tokens = source[1:].numel()
    assert (cache.model_nats.item() / tokens, cache.model_correct.item() / tokens) == (plain.loss, plain.accuracy)
    assert cached.loss < plain.loss  # and the mixture itself is not what was counted


def test_the_cache_lowers_the_loss_on_a_text_that_repeats_a_rare_word():
    model = tiny_model()
    source = torch.randint(0, 40, (300, 1), generator=torch.Generator().manual_seed(4))
    source[::4] = 7  # the untrained model gives word 7 about 1/40
    plain = scoring.evaluate(model, source)
    cached = cache_evaluate(model, source, PointerCache(100, 1.0, 0.2))
    assert cached.loss < plain.loss - 0.05


def test_mixture_scores_puts_lambda_on_the_keys_next_words():
    """The accuracy's dense mixture: with lam = 1 the argmax is the most attended next word."""
    log_probs = torch.log_softmax(torch.tensor([[[5.0, 0.0, 0.0, 0.0]]]), -1)  # the model says 0
    weights = torch.tensor([[[0.2, 0.7, 0.1]]])
    key_words = torch.tensor([[1, 3, 2]])
    _, correct = mixture_scores(log_probs.clone(), torch.tensor([[3]]), weights, torch.ones(1, 1), key_words)
    assert correct.item() == 1


@pytest.mark.parametrize("change, message", [
    ({"--cache-theta": "0"}, "--cache-theta must be positive"),
    ({"--cache-lambda": "1.5"}, "--cache-lambda must be in [0, 1]"),
    ({"--cache-lambda": "-0.1"}, "--cache-lambda must be in [0, 1]"),
    ({"--cache-window": "0"}, "--cache-window must be at least 1"),
    ({"--cache-window": None}, "no cache defaults for"),  # a folder corpus has no published settings
])
def test_bad_cache_settings_are_one_line_errors(trained_run, capsys, change, message):
    run, _ = trained_run
    settings = {"--cache-window": "5", "--cache-theta": "1", "--cache-lambda": "0.1", **change}
    flags = [x for k, v in settings.items() if v is not None for x in (k, v)]
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    code = evaluate.main([str(run), "--cache", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_cache_on_a_trained_run_writes_its_settings(trained_run, tmp_path):
    run, _ = trained_run
    out = tmp_path / "cache.json"
    flags = ["--cache", "--cache-window", "50", "--cache-theta", "0.5", "--cache-lambda", "0.1"]
    assert evaluate.main([str(run), "--split", "valid", *flags, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["batch_size"] == 1 and result["cache"] == {"window": 50, "theta": 0.5, "lambda": 0.1,
                                                             "original_gaps": None}
    plain = tmp_path / "plain.json"
    assert evaluate.main([str(run), "--split", "valid", "--batch-size", "1", "--json", str(plain)]) == 0
    plain = json.loads(plain.read_text())
    assert result["without_cache"] == {k: plain[k] for k in ("loss", "ppl", "accuracy")}
    assert metrics(run)  # the run is untouched and still readable


def test_the_tuning_grid_scores_each_setting_as_evaluation_does():
    """tune.py's fast path (one recorded pass, then the attention alone) against evaluate()."""
    import tune
    model = tiny_model()
    source = torch.randint(0, 40, (3000, 1), generator=torch.Generator().manual_seed(5))
    source[::6] = 3
    grid = {"window": [20, 300], "theta": [0.5, 1.3], "lam": [0.0, 0.2]}
    rows = tune.cache_grid(model, source, grid, "fp32", chunk=700)
    assert len(rows) == 1 + 8
    for s, loss in rows[1:]:
        expected = cache_evaluate(model, source, PointerCache(s["window"], s["theta"], s["lam"])).loss
        assert loss == pytest.approx(expected, rel=1e-6), s
    assert rows[0][1] == scoring.evaluate(model, source).loss


def test_tune_writes_its_table_and_the_command_for_test(trained_run, tmp_path, capsys):
    import tune
    run, _ = trained_run
    flags = ["--windows", "5", "50", "--thetas", "0.5", "--lambdas", "0.1", "--out", str(tmp_path)]
    assert tune.main([str(run), "--method", "cache", *flags]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "tune-cache.json").read_text())["rows"]
    assert len(rows) == 3 and rows == sorted(rows, key=lambda r: r["val_loss"])
    best = rows[0]
    if best["window"]:
        assert f"--cache --cache-window {best['window']} --cache-theta {best['theta']:g}" in out
    else:
        assert "no setting beats plain evaluation" in out
    assert "| window | theta | lam | val loss | val ppl |" in (tmp_path / "tune-cache.md").read_text()
