"""Dynamic evaluation (dyneval.py) against plain evaluation and hand computations."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import evaluate
import train
from helpers import ROOT, TINY, digests, write_corpus
from lm import dyneval, faults, scoring
from lm.cache import PointerCache
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
        cached = scoring.evaluate(model, source, window=5, cache=PointerCache(30, 0.8, 0.3))
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
    The decoder weight's gradient comes in parts (kernels.LowRankGradient), with the tied
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


def test_kept_statistics_are_reused_and_checked(trained_run, tmp_path, monkeypatch, capsys):
    """--dyn-stats: the first call writes the file, a second split reads it (and scores exactly
    as a run that computes them), and statistics of other settings or garbage are refused."""
    run, _ = trained_run
    stats, out = tmp_path / "ms.pt", tmp_path / "out.json"
    flags = ["--dynamic-eval", "--dyn-stat-batches", "3", "--json", str(out)]
    assert evaluate.main([str(run), "--split", "valid", *flags, "--dyn-stats", str(stats)]) == 0
    assert stats.exists()
    assert evaluate.main([str(run), *flags]) == 0
    computed = json.loads(out.read_text())["loss"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the statistics were computed again")

    monkeypatch.setattr(dyneval, "gradient_statistics", must_not_run)
    assert evaluate.main([str(run), *flags, "--dyn-stats", str(stats)]) == 0
    assert json.loads(out.read_text())["loss"] == computed
    kept = stats.read_bytes()
    capsys.readouterr()
    assert evaluate.main([str(run), "--dynamic-eval", "--dyn-stat-batches", "4", "--dyn-stats", str(stats)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "stat_batches" in err and err.count("\n") == 1
    assert stats.read_bytes() == kept  # not overwritten
    stats.write_bytes(b"not a torch file")
    assert evaluate.main([str(run), *flags, "--dyn-stats", str(stats)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read gradient statistics") and err.count("\n") == 1


def test_tune_keeps_the_statistics_for_the_test_command(trained_run, tmp_path, capsys, monkeypatch):
    import tune
    run, _ = trained_run
    stats = tmp_path / "ms.pt"
    flags = ["--method", "dynamic", "--tokens", "200", "--lrs", "1e-3", "--lambdas", "0.01", "--dyn-stat-batches", "2",
             "--dyn-stats", str(stats), "--out", str(tmp_path)]
    assert tune.main([str(run), *flags]) == 0
    out = capsys.readouterr().out
    assert stats.exists()
    if "no setting beats plain evaluation" not in out:
        assert f"--dyn-stat-batches 2 --dyn-stats {stats}" in out
    monkeypatch.setattr(dyneval, "gradient_statistics", None)  # evaluate.py must read them from the file
    assert evaluate.main([str(run), "--split", "valid", "--dynamic-eval", "--dyn-stat-batches", "2",
                          "--dyn-stats", str(stats)]) == 0


KEPT_PASS = ["--split", "valid", "--dynamic-eval", "--cache", "--cache-window", "20", "--cache-theta", "0.5",
             "--cache-lambda", "0.2", "--dyn-lr", "1e-3",
             "--dyn-stat-batches", "3"]


def count_segments(monkeypatch, then=None):
    """Count the segments dynamic evaluation finishes (faults.point's "adapting"); then(n) runs
    after the n-th."""
    done = []

    def point(name):
        if name == "adapting":
            done.append(name)
            if then:
                then(len(done))

    monkeypatch.setattr(faults, "point", point)
    return done


def test_a_stopped_pass_continues_to_the_numbers_of_one_never_stopped(trained_run, tmp_path, monkeypatch, capsys):
    """--dyn-checkpoint: Ctrl-C after the 4th segment saves the pass after the 5th; the same
    command continues from there (it runs only the segments left) and ends with the numbers of a
    pass never stopped, cache and model-alone sums included; the file is then deleted."""
    run, _ = trained_run
    before = digests(run)
    whole, part, kept = tmp_path / "whole.json", tmp_path / "part.json", tmp_path / "pass.pt"
    total = count_segments(monkeypatch)
    assert evaluate.main([str(run), *KEPT_PASS, "--json", str(whole)]) == 0
    total = len(total)
    count_segments(monkeypatch, lambda n: n == 4 and os.kill(os.getpid(), signal.SIGINT))
    assert evaluate.main([str(run), *KEPT_PASS, "--json", str(part), "--dyn-checkpoint", str(kept)]) == 130
    assert kept.exists() and not part.exists()
    assert "run the same command to continue" in capsys.readouterr().err
    rest = count_segments(monkeypatch)
    assert evaluate.main([str(run), *KEPT_PASS, "--json", str(part), "--dyn-checkpoint", str(kept)]) == 0
    assert len(rest) == total - 5 and not kept.exists()
    a, b = json.loads(whole.read_text()), json.loads(part.read_text())
    assert (a["loss"], a["accuracy"], a["without_cache"]) == (b["loss"], b["accuracy"], b["without_cache"])
    assert a["loss"] != a["without_cache"]["loss"]
    assert (a["dynamic_eval"]["continued_from_segment"], b["dynamic_eval"]["continued_from_segment"]) == (None, 5)
    assert digests(run) == before


def test_a_kept_pass_of_another_job_is_refused_and_left_alone(trained_run, tmp_path, monkeypatch, capsys):
    run, _ = trained_run
    kept = tmp_path / "pass.pt"
    count_segments(monkeypatch, lambda n: n == 2 and os.kill(os.getpid(), signal.SIGINT))
    assert evaluate.main([str(run), *KEPT_PASS, "--dyn-checkpoint", str(kept)]) == 130
    saved = kept.read_bytes()
    capsys.readouterr()
    assert evaluate.main([str(run), *KEPT_PASS, "--dyn-lr", "2e-3", "--dyn-checkpoint", str(kept)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "settings" in err and err.count("\n") == 1
    assert kept.read_bytes() == saved
    kept.write_bytes(saved[:1000])  # torn
    assert evaluate.main([str(run), *KEPT_PASS, "--dyn-checkpoint", str(kept)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the saved pass") and err.count("\n") == 1
    assert evaluate.main([str(run), "--dyn-checkpoint", str(kept)]) == 2
    assert capsys.readouterr().err == "error: --dyn-checkpoint applies to --dynamic-eval only\n"


def test_a_killed_pass_continues_from_its_last_save(trained_run, tmp_path):
    """SIGKILL (LM_FAULT) after the 7th segment of a pass saved after every segment: the same
    command continues it to the numbers of a pass never stopped."""
    run, _ = trained_run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LM_DATA_CACHE": str(tmp_path / "cache")}
    env.pop("LM_FAULT", None)

    def evaluate_py(out, *flags, fault=None):
        proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(run), *KEPT_PASS, "--json", str(out),
                               *flags], env={**env, "LM_FAULT": fault} if fault else env, cwd=ROOT,
                              capture_output=True, text=True, check=False)
        return proc.returncode

    kept = tmp_path / "pass.pt"
    assert evaluate_py(tmp_path / "whole.json") == 0
    flags = ["--dyn-checkpoint", str(kept), "--dyn-checkpoint-every", "0"]
    assert evaluate_py(tmp_path / "part.json", *flags, fault="adapting@7") == -signal.SIGKILL
    assert torch.load(kept, weights_only=True)["segment"] == 7
    assert evaluate_py(tmp_path / "part.json", *flags) == 0 and not kept.exists()
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "part"))
    assert (a["loss"], a["accuracy"], a["without_cache"]) == (b["loss"], b["accuracy"], b["without_cache"])


def test_a_stopped_tuning_run_skips_the_settings_it_finished(trained_run, tmp_path, monkeypatch, capsys):
    """tune.py --method dynamic keeps each finished setting: run again after a stop in the second
    one, it scores only that one and writes the table of a run never stopped."""
    import tune
    run, _ = trained_run
    flags = ["--method", "dynamic", "--tokens", "120", "--lrs", "1e-3", "3e-3", "--lambdas", "0.01",
             "--dyn-stat-batches", "2"]
    assert tune.main([str(run), *flags, "--out", str(tmp_path / "whole")]) == 0
    scored, real = [], dyneval.dynamic_evaluate

    def stopped_in_the_second(*args, **kwargs):
        scored.append(args[3].lr)
        if len(scored) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tune, "dynamic_evaluate", stopped_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        tune.main([str(run), *flags, "--out", str(tmp_path / "part")])
    assert json.loads((tmp_path / "part" / "tune-dynamic.partial.json").read_text())["rows"][0]["lr"] == 1e-3
    scored.clear()
    monkeypatch.setattr(tune, "dynamic_evaluate", lambda *a, **k: scored.append(a[3].lr) or real(*a, **k))
    assert tune.main([str(run), *flags, "--out", str(tmp_path / "part")]) == 0
    assert scored == [3e-3] and not (tmp_path / "part" / "tune-dynamic.partial.json").exists()
    rows = [json.loads((tmp_path / d / "tune-dynamic.json").read_text())["rows"] for d in ("whole", "part")]
    assert rows[0] == rows[1]
