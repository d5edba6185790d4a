"""bench.py runs end to end and reports what it claims to; its numbers come from recorded runs."""
import json

import pytest

import bench
from helpers import needs_bf16_cpu
from lm import presets


def test_bench_smoke_run_reports_throughput_flops_and_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WT2_VOCAB", 1000)  # random tokens over a small vocabulary: fast
    timed = []

    def made_up_speed(device, dtype, m, k, n):  # note each shape; a speed that depends on it, untimed
        timed.append((m, k, n))
        return 1e9 * (1 + (m + k + n) % 7)

    monkeypatch.setattr(bench, "matmul_speed", made_up_speed)
    out = tmp_path / "bench.json"
    argv = ["--config", "lstm-small", "--data", str(tmp_path / "absent"), "--dtype", "fp32", "--steps", "2",
            "--eval-steps", "1", "--windows", "2", "--warmup", "1", "--json", str(out),
            "--profile", str(tmp_path / "profile.txt")]
    assert bench.main(argv) == 0
    profile = (tmp_path / "profile.txt").read_text()
    for phase in ("train", "eval"):
        assert f"== lstm-small, ours, fp32, {phase} ==" in profile
    assert "aten::" in profile and "Self CPU" in profile
    report = json.loads(out.read_text())
    assert report["data"] == "random" and report["bptt"] == 35 and report["batch_size"] == 20
    (run,) = report["runs"]
    # 2 layers of 2*4h(i+h) with i = h = 200, plus the 2*200*1000 decoder, per forward token.
    assert run["model_flops_per_token"] == {"forward": 2 * (2 * 4 * 200 * 400) + 2 * 200 * 1000,
                                            "train": 3 * (2 * (2 * 4 * 200 * 400) + 2 * 200 * 1000)}
    for name in ("ours", "plain"):
        for phase, flops in (("train", "train"), ("eval", "forward")):
            r = run[name][phase]
            assert r["tokens_per_s"] > 0 and 0 < r["fraction_of_ceiling"]
            assert r["achieved_gflops"] == pytest.approx(
                r["tokens_per_s"] * run["model_flops_per_token"][flops] / 1e9, abs=0.06)
        assert run["ratio_ours_to_plain"]["train"] == pytest.approx(
            run["ours"]["train"]["tokens_per_s"] / run["plain"]["train"]["tokens_per_s"], abs=1e-3)
    assert run["ours"]["parameters"] == run["plain"]["parameters"]
    # The ceiling is the best of square matmuls and the model's own GEMMs (batch 20 x bptt 35, two
    # layers of 200, vocabulary 1000), forward and backward.
    layer = [(700, 200, 800), (700, 800, 200), (800, 700, 200), (20, 200, 800), (20, 800, 200), (800, 700, 200)]
    decoder = [(700, 200, 1000), (700, 1000, 200), (200, 700, 1000)]
    assert sorted(timed) == sorted([(2048,) * 3, (4096,) * 3, *layer, *layer, *decoder])
    assert run["matmul_ceiling_gflops"] == max(run["matmul_gflops"].values()) == 7.0
    # The shape bound: training FLOPs per token over the time of each shape's share at its speed.
    speed = {s: 1 + sum(s) % 7 for s in timed}
    per_token = [(s, 2 * s[1] * s[2] if s[0] == 20 else 2 * s[0] * s[1] * s[2] / 700) for s in layer * 2 + decoder]
    assert sum(f for _, f in per_token) == run["model_flops_per_token"]["train"]
    bound = run["model_flops_per_token"]["train"] / sum(f / speed[s] for s, f in per_token)
    assert run["shape_bound"]["train_gflops"] == pytest.approx(bound, abs=0.06)
    assert run["shape_bound"]["fraction_of_ceiling"] == pytest.approx(bound / 7.0, abs=1e-3)
    for name in ("ours", "plain"):
        assert run[name]["train"]["fraction_of_shape_bound"] == pytest.approx(
            run[name]["train"]["achieved_gflops"] / bound, abs=6e-4)


@needs_bf16_cpu
def test_bench_lstm_times_both_kernels_and_marks_what_auto_picks(tmp_path, monkeypatch):
    from experiments import bench_lstm
    from lm.recurrence import OWN_MIN_STEP_WORK

    big = OWN_MIN_STEP_WORK // (64 * 64) - 64  # batch 64, hidden 64: the input size at the threshold
    monkeypatch.setattr(bench_lstm, "SHAPES", [("small", 3, 2, 4, 8), ("at threshold", 2, 64, big, 64)])
    out = tmp_path / "layers.json"
    assert bench_lstm.main(["--reps", "1", "--json", str(out)]) == 0
    small, large = json.loads(out.read_text())["layers"]
    assert small["step_work"] == 2 * 8 * 12 and not small["auto_picks_own"]
    assert large["step_work"] == OWN_MIN_STEP_WORK and large["auto_picks_own"]
    for r in (small, large):
        assert r["fused_ms"] > 0 and r["own_ms"] > 0
        assert r["speedup_own"] == pytest.approx(r["fused_ms"] / r["own_ms"], rel=0.01)
    assert bench_lstm.main(["--reps", "1", "--dtype", "fp32", "--json", str(out)]) == 0
    assert not any(r["auto_picks_own"] for r in json.loads(out.read_text())["layers"])


@needs_bf16_cpu
def test_bench_lstm_times_the_forward_alone_at_evaluation_shapes(tmp_path, monkeypatch):
    from experiments import bench_lstm
    monkeypatch.setattr(bench_lstm, "EVAL_SHAPES", [("eval", 6, 2, 4, 8)])
    out = tmp_path / "eval.json"
    assert bench_lstm.main(["--reps", "1", "--forward-only", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["layers"]
    assert report["forward_only"] and row["name"] == "eval" and not row["auto_picks_own"]
    assert row["fused_ms"] > 0 and row["own_ms"] > 0


@pytest.mark.parametrize("name", ["qrnn-wt2", "transformer-wt2"])
def test_bench_times_the_qrnn_against_an_lstm_and_the_transformer_alone(tmp_path, monkeypatch, name):
    monkeypatch.setattr(bench, "WT2_VOCAB", 500)
    monkeypatch.setattr(bench, "matmul_speed", lambda device, dtype, m, k, n: 1e9)
    small = {"emsize": 16, "nhid": 32, "nlayers": 2, "batch_size": 4, "bptt": 10}
    if name == "transformer-wt2":
        small.update(nhead=2, context=12)
    monkeypatch.setitem(presets.PRESETS, name, {**presets.PRESETS[name], **small})
    out = tmp_path / "bench.json"
    assert bench.main(["--config", name, "--data", str(tmp_path / "absent"), "--steps", "1", "--eval-steps", "1",
                       "--windows", "1", "--warmup", "0", "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["ours"]["train"]["tokens_per_s"] > 0 and run["ours"]["eval"]["tokens_per_s"] > 0
    assert run["ours"]["train"]["bptt"] == 10
    decoder = 2 * 16 * 500
    if name == "qrnn-wt2":  # layer 1 sees (x_t, x_t-1): 2 x 16 inputs to 3 x 32 gates; layer 2 32 -> 3 x 16
        assert run["model_flops_per_token"]["forward"] == 2 * 3 * 32 * 2 * 16 + 2 * 3 * 16 * 32 + decoder
        assert run["plain"]["parameters"] > 0 and "train" in run["ratio_ours_to_plain"] and "shape_bound" in run
    else:  # 2 blocks of qkv and projection (4 d^2), the MLP (2 d nhid) and attention over 10 positions (4 n d)
        assert run["model_flops_per_token"]["forward"] == 2 * (2 * (4 * 16 * 16 + 2 * 16 * 32) + 4 * 10 * 16) + decoder
        assert "plain" not in run and "shape_bound" not in run
        assert run["ours"]["eval"]["bptt"] == 12 and run["ours"]["eval"]["batch_size"] == 16


def test_batch_size_flag_times_training_at_that_batch_and_drops_the_reference(tmp_path, monkeypatch):
    """--batch-size 7 on awd-lstm-wt2 (shrunk): training runs 7 rows, the recurrent GEMM shapes have
    7 rows, evaluation keeps the config's batch, and the reference ratio (at the config's batch) is gone."""
    monkeypatch.setattr(bench, "WT2_VOCAB", 300)
    timed = []

    def speed(device, dtype, m, k, n):
        timed.append((m, k, n))
        return 1e9

    monkeypatch.setattr(bench, "matmul_speed", speed)
    monkeypatch.setitem(presets.PRESETS, "awd-lstm-wt2", {**presets.PRESETS["awd-lstm-wt2"], "emsize": 8,
                                                          "nhid": 16, "nlayers": 2, "bptt": 6, "eval_batch_size": 3})
    out = tmp_path / "bench.json"
    assert bench.main(["--config", "awd-lstm-wt2", "--batch-size", "7", "--data", str(tmp_path / "absent"),
                       "--steps", "1", "--eval-steps", "1", "--windows", "1", "--warmup", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert report["batch_size"] == 7 and run["ours"]["train"]["batch_size"] == 7
    assert run["ours"]["eval"]["batch_size"] == 3
    assert (7, 16, 64) in timed and not any(m == 80 for m, _, _ in timed)
    assert report["reference"] is None and "ratio_to_reference" not in run
