"""Dynamic evaluation (dyneval.py) against plain evaluation and hand computations."""
import json

import pytest
import torch
import torch.nn.functional as F

import evaluate
import train
from helpers import TINY, digests, write_corpus
from lm import dyneval, scoring
from lm.cache import PointerCache, cache_evaluate
from lm.dyneval import DynamicSettings, dynamic_evaluate, gradient_statistics
from model import AWDLSTM, AWDConfig


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return AWDLSTM(AWDConfig(vocab_size=30, emsize=8, nhid=12, nlayers=2)).eval()


def tokens(rows, seed, batch=1):
    return torch.randint(0, 30, (rows, batch), generator=torch.Generator().manual_seed(seed))


def fake_ms(model, seed=5):
    """Positive made-up gradient statistics, spread over two orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    return {n: 10 ** (-3 * torch.rand(p.shape, generator=g)) for n, p in model.named_parameters()}


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def plain_evaluation(model, source):
    """Batch-1 evaluation in 5-token windows, with the LSTM kernel that dynamic evaluation uses
    (the kernels agree to float rounding, not bit for bit)."""
    with model.lstm_kernel(dyneval.DYNAMIC_LSTM_KERNEL):
        return scoring.evaluate(model, source, window=5)


def test_no_step_and_no_decay_give_plain_evaluation_exactly():
    model = tiny_model()
    source = tokens(103, 1)
    loss, accuracy = dynamic_evaluate(model, source, fake_ms(model), DynamicSettings(lr=0.0, lam=0.0, epsilon=1e-3))
    plain = plain_evaluation(model, source)
    assert (loss, accuracy) == (plain.loss, plain.accuracy)


def test_with_a_cache_and_no_step_it_equals_plain_evaluation_with_the_cache_exactly():
    model = tiny_model()
    source = tokens(103, 7)
    source[::4] = 3  # a word that recurs, so that the cache matters
    settings = DynamicSettings(lr=0.0, lam=0.0, epsilon=1e-3)
    loss, accuracy = dynamic_evaluate(model, source, fake_ms(model), settings, cache=PointerCache(30, 0.8, 0.3))
    with model.lstm_kernel(dyneval.DYNAMIC_LSTM_KERNEL):
        cached = cache_evaluate(model, source, PointerCache(30, 0.8, 0.3), window=5)
    assert (loss, accuracy) == (cached.loss, cached.accuracy)
    assert loss != plain_evaluation(model, source).loss


def test_with_a_cache_the_model_alone_is_dynamic_evaluation_alone_exactly():
    """The update descends the model's own loss, so a pass with the cache adapts the weights as
    one without it does, and the model-alone sums it keeps are dynamic evaluation alone."""
    model = tiny_model()
    source = tokens(103, 8)
    source[::4] = 3
    settings = DynamicSettings(lr=3e-2, lam=2e-2, epsilon=1e-3)
    cache = PointerCache(30, 0.8, 0.3)
    mixed, _ = dynamic_evaluate(model, source, fake_ms(model), settings, cache=cache)
    alone = dynamic_evaluate(model, source, fake_ms(model), settings)
    n = source.size(0) - 1
    assert (cache.model_nats.item() / n, cache.model_correct.item() / n) == alone
    assert alone[0] != plain_evaluation(model, source).loss and mixed != alone[0]


def test_the_first_segment_is_scored_before_it_is_learned_from():
    model = tiny_model()
    source = tokens(6, 2)  # one segment of 5 targets
    loss, _ = dynamic_evaluate(model, source, fake_ms(model), DynamicSettings(lr=1.0, lam=0.0, epsilon=1e-3))
    assert loss == plain_evaluation(model, source).loss
    longer = tokens(60, 2)
    assert dynamic_evaluate(model, longer, fake_ms(model), DynamicSettings(1e-2, 0.0, 1e-3))[0] \
        != plain_evaluation(model, longer).loss  # later segments do see the updates


def manual_two_steps(model, source, ms, s):
    """θ after two segments, from the update rule's formula, with gradients from F.cross_entropy
    on the model's logits and the state of segment 1 carried (detached) into segment 2."""
    names = [n for n, _ in model.named_parameters()]
    theta0 = weights(model)
    mean_ms = sum(ms[n].mean() for n in names) / len(names)
    decay = {n: s.lam * torch.clamp(ms[n] / mean_ms, max=1 / s.lam) for n in names}
    hidden = model.init_hidden(1)
    for k in range(2):
        y = source[5 * k + 1:5 * k + 6]  # a shorter last segment when source is
        x = source[5 * k:5 * k + y.size(0)]
        model.zero_grad()
        out = model(x, hidden)
        F.cross_entropy(out.logits.view(-1, 30), y.reshape(-1)).backward()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p += decay[n] * (theta0[n] - p) - s.lr * p.grad / (ms[n] + s.epsilon)
        hidden = [(h.detach(), c.detach()) for h, c in out.hidden]
    expected = weights(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(theta0[n])
    return expected


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("update", ["eager", "one pass", pytest.param("compiled", marks=pytest.mark.slow)])
def test_two_updates_match_the_formula(monkeypatch, update, tied):
    """Every way of running the update: eagerly from stored constants; the one-pass expression
    that large models get compiled, run here as plain PyTorch; and compiled (slow: it compiles).
    The decoder weight's gradient comes in parts (decoder.LowRankGradient), with the tied
    lookup's rows or without them. The second segment is one token short: its parts are padded."""
    compiled = update != "eager"
    monkeypatch.setattr(dyneval, "COMPILED_UPDATE_MIN_PARAMS", 0 if compiled else 1 << 62)
    if update == "one pass":
        monkeypatch.setattr(dyneval, "_compiled_update", lambda: dyneval._update_in_one_pass)
    torch.manual_seed(0)
    model = AWDLSTM(AWDConfig(vocab_size=30, emsize=8, nhid=12, nlayers=2, tied=tied)).eval()
    source, ms = tokens(10, 3), fake_ms(model)
    s = DynamicSettings(lr=3e-3, lam=0.05, epsilon=1e-3)
    expected = manual_two_steps(model, source, ms, s)
    seen = {}
    real_restore = dyneval.Adaptation.restore

    def capture_then_restore(self):
        seen.update(weights(model))
        seen["compiled"] = self.compiled  # still: compiling did not fail over to the eager update
        real_restore(self)

    monkeypatch.setattr(dyneval.Adaptation, "restore", capture_then_restore)
    theta0 = weights(model)
    dynamic_evaluate(model, source, ms, s)
    assert seen.pop("compiled") == compiled
    for n, p in expected.items():
        torch.testing.assert_close(seen[n], p, rtol=1e-5, atol=1e-7)
        assert not torch.equal(seen[n], theta0[n]), n  # the step moved every tensor
        assert torch.equal(model.get_parameter(n), theta0[n])  # and θ0 is back


def test_a_failed_compile_gives_a_warning_and_the_eager_update(monkeypatch, capsys):
    model = tiny_model()
    source, ms, s = tokens(31, 8), fake_ms(model), DynamicSettings(lr=1e-2, lam=0.05, epsilon=1e-3)
    eager = dynamic_evaluate(model, source, ms, s)

    def no_compiler(*args):
        raise RuntimeError("InductorError: CppCompileError: no C++ compiler\nmore detail")

    monkeypatch.setattr(dyneval, "COMPILED_UPDATE_MIN_PARAMS", 0)
    monkeypatch.setattr(dyneval, "_compiled_update", lambda: no_compiler)
    assert dynamic_evaluate(model, source, ms, s) == eager
    err = capsys.readouterr().err
    assert err.startswith("warning: dynamic evaluation's compiled update failed (") and err.count("\n") == 1


@pytest.mark.parametrize("update", ["eager", "one pass"])
def test_decay_rates_are_clipped_at_one_over_lambda(monkeypatch, update):
    """A huge MS entry has its decay rate clipped to 1/lambda, i.e. a decay of 1: one step with no
    gradient pulls that entry all the way back to θ0, where an unclipped rate would overshoot."""
    monkeypatch.setattr(dyneval, "COMPILED_UPDATE_MIN_PARAMS", 0 if update == "one pass" else 1 << 62)
    monkeypatch.setattr(dyneval, "_compiled_update", lambda: dyneval._update_in_one_pass)
    model = tiny_model()
    ms = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    ms["decoder.bias"][0] = 1e6
    adaptation = dyneval.Adaptation(model, ms, DynamicSettings(lr=0.0, lam=0.1, epsilon=1e-3))
    theta0 = model.decoder.bias.detach().clone()
    with torch.no_grad():
        model.decoder.bias.add_(1.0)
    adaptation.step([torch.zeros_like(p) for p in model.parameters()])
    bias = model.decoder.bias.detach()
    assert bias[0].item() == pytest.approx(theta0[0].item(), abs=1e-6)  # decay 1: back at θ0
    mean_ms = 1 + (1e6 - 1) / 30 / len(ms)  # the mean over tensors of each tensor's mean MS
    assert bias[1].item() - theta0[1].item() == pytest.approx(1 - 0.1 / mean_ms, rel=1e-4)  # moved by d = lam / mean


def test_gradient_statistics_are_the_root_mean_square_of_segment_gradients():
    model = tiny_model()
    source = tokens(12, 4, batch=3)  # two segments of 5 rows (the third would start at row 10)
    ms = gradient_statistics(model, source, 5)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    squares, hidden = {}, model.init_hidden(3)
    for k in range(3):  # rows 0..4, 5..9, 10 (one row left: a segment of length 1)
        x, y = source[5 * k:5 * k + 5][:source.size(0) - 1 - 5 * k], source[5 * k + 1:5 * k + 6]
        model.zero_grad()
        out = model(x, hidden)
        F.cross_entropy(out.logits.view(-1, 30), y.reshape(-1)).backward()
        for n, p in model.named_parameters():
            squares[n] = squares.get(n, 0) + p.grad ** 2
        hidden = [(h.detach(), c.detach()) for h, c in out.hidden]
    for n, sq in squares.items():
        torch.testing.assert_close(ms[n], (sq / 3).sqrt(), rtol=1e-4, atol=1e-8)


def test_a_second_split_starts_from_the_trained_weights():
    model = tiny_model()
    source, ms, s = tokens(40, 6), fake_ms(model), DynamicSettings(lr=1e-2, lam=0.01, epsilon=1e-3)
    assert dynamic_evaluate(model, source, ms, s) == dynamic_evaluate(model, source, ms, s)
    assert [rnn.kernel for rnn in model.rnns] == ["auto", "auto"]  # the layers' kernel is back too


def test_evaluate_leaves_the_run_directory_unchanged(tmp_path):
    data = write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    assert train.main(["--data", str(data), "--save", str(run), "--epochs", "1", *TINY]) == 0
    before = digests(run)
    flags = ["--dynamic-eval", "--dyn-lr", "1e-3", "--dyn-stat-batches", "3", "--json", str(tmp_path / "d.json")]
    assert evaluate.main([str(run), *flags]) == 0
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["batch_size"] == 1 and result["window"] == 5 and result["dynamic_eval"]["lr"] == 1e-3
    assert digests(run) == before


@pytest.mark.parametrize("flags, message", [
    (["--dyn-lr", "-1"], "--dyn-lr must not be negative"),
    (["--dyn-lambda", "2"], "--dyn-lambda must be in [0, 1]"),
    (["--dyn-epsilon", "0"], "--dyn-epsilon must be positive"),
    (["--dyn-bptt", "0"], "--dyn-bptt must be at least 1"),
    (["--dyn-stat-batches", "0"], "--dyn-stat-batches must be at least 1"),
    (["--window", "50"], "--window does not apply to --dynamic-eval"),
    (["--dyn-checkpoint-every", "-1"], "--dyn-checkpoint-every must not be negative"),
])
def test_bad_dynamic_settings_are_one_line_errors(trained_run, capsys, flags, message):
    run, _ = trained_run
    assert evaluate.main([str(run), "--dynamic-eval", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_dynamic_eval_without_enough_training_data_is_a_one_line_error(tmp_path, capsys):
    lines = ["the cat sat on the mat ."] * 20  # 140 tokens
    data = write_corpus(tmp_path / "corpus", train=lines, valid=lines, test=lines)
    run = tmp_path / "run"
    assert train.main(["--data", str(data), "--save", str(run), "--epochs", "1", *TINY, "--batch-size", "2"]) == 0
    capsys.readouterr()
    assert evaluate.main([str(run), "--dynamic-eval"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dynamic-eval takes its gradient statistics from the training split")
    assert err.count("\n") == 1
