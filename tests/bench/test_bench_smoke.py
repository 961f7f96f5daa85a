"""A tiny `make bench` run: the harness starts every system, measures and reports (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from bench import run

pytestmark = pytest.mark.integration


def test_bench_harness_runs_end_to_end(tmp_path):
    argv = ["--systems", "zerolens-tflite,in-process,seed", "--concurrency", "1,2", "--duration", "1"]
    argv += ["--gap-ms", "20"]
    out = run.main([*argv, "--megapixels", "0", "--out", str(tmp_path)])
    results = json.loads((out / "results.json").read_text())
    assert [r["system"] for r in results["runs"]] == ["zerolens-tflite", "in-process", "seed"]
    for system in results["runs"]:
        assert [lv["concurrency"] for lv in system["levels"]] == [1, 2]
        assert all(lv["ok"] > 0 and not lv["errors"] for lv in system["levels"]), system
        for lv in system["levels"]:  # every server process was measured, and each did some work
            assert lv["core_ms_per_image"] and all(v > 0 for v in lv["core_ms_per_image"].values()), lv
            assert 0 < lv["busy_pct"] <= 100
        sporadic = system["sporadic"]  # c=1 with a pause after each answer
        assert sporadic["concurrency"] == 1 and sporadic["gap_ms"] == 20
        assert 0 < sporadic["ok"] <= 1 / 0.020 and not sporadic["errors"], sporadic
    zerolens = results["runs"][0]["levels"][-1]["model_metrics"]
    assert zerolens["zerolens_model_batch_size_count"] > 0  # the model server's metrics were scraped
    assert results["reference"]["ceiling_rps"] > 0 and results["reference"]["limit_rps"] > 0
    before, after = results["reference_runs"]  # the ratios use the mean of the two
    assert results["reference"]["ceiling_rps"] == pytest.approx(
        (before["ceiling_rps"] + after["ceiling_rps"]) / 2
    )
    table = (out / "results.md").read_text()
    assert "| zerolens-tflite | 2 |" in table and "× ceiling" in table and "server core-ms/image" in table
    assert "measured before and after the systems" in table
    assert "Sporadic requests (one client pausing 20 ms after each answer" in table
    for plot in ("throughput.png", "latency.png", "batch_sizes.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


def test_rounds_run_each_system_again_and_report_the_median(tmp_path):
    argv = ["--systems", "in-process", "--concurrency", "1", "--duration", "1", "--gap-ms", "0"]
    out = run.main([*argv, "--rounds", "3", "--megapixels", "0", "--out", str(tmp_path)])
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"] == 3 and [r["system"] for r in results["runs"]] == ["in-process"]
    (level,) = results["runs"][0]["levels"]
    assert len(level["rounds_rps"]) == 3 and all(rps > 0 for rps in level["rounds_rps"])
    assert level["throughput_rps"] == sorted(level["rounds_rps"])[1]
    table = (out / "results.md").read_text()
    assert "3 rounds, every system once per round in alternating order" in table
    low, high = min(level["rounds_rps"]), max(level["rounds_rps"])
    assert f"| in-process | 1 | {level['throughput_rps']:.1f} ({low:.1f}–{high:.1f}) |" in table
