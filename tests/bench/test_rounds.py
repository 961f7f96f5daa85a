"""`make bench --rounds N`: each level reports its median round, whole, with every round's images/s."""

from __future__ import annotations

from bench import report
from bench.run import median_round


def _round(rps: list[float], p50: list[float], sporadic_p50: float, rss: float) -> dict:
    levels = [
        {"concurrency": c, "throughput_rps": r, "p50_ms": p, "core_ms_per_image": {"web": 10 + r / 100}}
        for c, r, p in zip((1, 16), rps, p50, strict=True)
    ]
    return {
        "system": "zerolens-tflite",
        "levels": levels,
        "rss_mb": {"web": {"1": rss}},
        "sporadic": {"p50_ms": sporadic_p50, "gap_ms": 50},
    }


def test_each_level_is_its_median_round_whole() -> None:
    rounds = [
        _round([50.0, 90.0], [20.0, 200.0], 30.0, 100),
        _round([60.0, 80.0], [15.0, 230.0], 25.0, 110),
        _round([40.0, 95.0], [25.0, 190.0], 35.0, 120),
    ]
    run = median_round(rounds)
    c1, c16 = run["levels"]
    assert (c1["throughput_rps"], c1["p50_ms"]) == (50.0, 20.0)  # round 1's c=1, with its own latency
    assert (c16["throughput_rps"], c16["p50_ms"]) == (90.0, 200.0)  # round 1's c=16 too
    assert c1["rounds_rps"] == [50.0, 60.0, 40.0] and c16["rounds_rps"] == [90.0, 80.0, 95.0]
    assert run["sporadic"]["p50_ms"] == 30.0 and run["sporadic"]["rounds_p50_ms"] == [30.0, 25.0, 35.0]
    assert run["rss_mb"] == {"web": {"1": 120}} and run["rounds"] == 3  # memory at the end of the last


def test_an_even_count_takes_the_lower_middle_round() -> None:
    run = median_round(
        [_round([50.0, 90.0], [20.0, 200.0], 30.0, 1), _round([60.0, 80.0], [15.0, 230.0], 25.0, 1)]
    )
    assert [lv["throughput_rps"] for lv in run["levels"]] == [50.0, 80.0]
    assert run["sporadic"]["p50_ms"] == 25.0


def test_one_round_is_unchanged_but_for_its_count() -> None:
    only = _round([50.0, 90.0], [20.0, 200.0], 30.0, 100)
    run = median_round([only])
    assert [lv["throughput_rps"] for lv in run["levels"]] == [50.0, 90.0] and run["rounds"] == 1


def test_the_table_shows_the_spread_over_rounds() -> None:
    ref = {"ceiling_rps": 80.0, "limit_rps": 120.0}
    level = {
        "concurrency": 16,
        "throughput_rps": 90.0,
        "rounds_rps": [90.0, 80.0, 95.0],
        "p50_ms": 200.0,
        "p95_ms": 250.0,
        "p99_ms": 300.0,
        "errors": {},
        "client_cpu_s": 0.5,
    }
    assert "| zerolens-tflite | 16 | 90.0 (80.0–95.0) |" in report._row("zerolens-tflite", level, ref, None)
    assert "(" not in report._row("zerolens-tflite", level | {"rounds_rps": [90.0]}, ref, None).split("|")[3]
