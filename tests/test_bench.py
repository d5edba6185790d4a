"""bench.py runs end to end and reports what it claims to; its numbers come from recorded runs."""
import json

import pytest

import bench


def test_bench_smoke_run_reports_throughput_flops_and_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WT2_VOCAB", 1000)  # random tokens over a small vocabulary: fast
    ceiling = bench.matmul_ceiling
    monkeypatch.setattr(bench, "matmul_ceiling", lambda device, dtype: ceiling(device, dtype, size=512))
    out = tmp_path / "bench.json"
    argv = ["--config", "lstm-small", "--data", str(tmp_path / "absent"), "--dtype", "fp32", "--steps", "2",
            "--eval-steps", "1", "--windows", "2", "--warmup", "1", "--json", str(out)]
    assert bench.main(argv) == 0
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
