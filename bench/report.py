"""Turns a benchmark's results.json into a markdown table, summary lines and PNG plots."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from pathlib import Path


def machine() -> dict[str, str | int]:
    """Where the numbers came from."""
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def batch_histogram(metrics: dict[str, float]) -> dict[float, float]:
    """Per-bucket counts of batch sizes (not cumulative) from scraped bucket samples."""
    cumulative = {}
    for key, value in metrics.items():
        match = re.match(r'zerolens_model_batch_size_bucket\{le="([^"]+)"\}', key)
        if match and match.group(1) != "+Inf":
            cumulative[float(match.group(1))] = value
    out, previous = {}, 0.0
    for le in sorted(cumulative):
        out[le] = cumulative[le] - previous
        previous = cumulative[le]
    return out


def _mean(metrics: dict[str, float], name: str) -> float | None:
    count = metrics.get(f"{name}_count", 0)
    return metrics.get(f"{name}_sum", 0) / count if count else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    ref = results["reference"]
    lines = [
        "# zerolens benchmark",
        "",
        f"Machine: {results['machine']['cpu']} ({results['machine']['cores']} cores), "
        f"Python {results['machine']['python']}. {len(results['photos'])} photos, "
        f"{results['duration_s']:g} s per level.",
        *_rounds(results.get("rounds", 1)),
        "",
        f"- **ceiling** (decode + inference, one after another, in-process): {ref['ceiling_rps']:.1f} "
        f"images/s, {ref['ceiling_latency_ms']:.1f} ms per image (median)",
        f"- **core costs**: decode {ref['decode_core_ms']:.2f} core-ms, inference "
        f"{ref['inference_core_ms']:.2f} core-ms (1 thread, batch {ref['best_batch']}) "
        f"→ **limit** {ref['limit_rps']:.1f} images/s "
        f"on {ref['cores']} cores ({ref['limit_rps'] / ref['ceiling_rps']:.2f}× the ceiling)",
        *_drift(results.get("reference_runs", [])),
        "",
        "| system | c | images/s | × ceiling | × limit | × best peer | p50 ms | p95 ms | p99 ms | errors "
        "| mean batch | mean queue ms | server core-ms/image | cores busy | loadgen CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    best = best_peer(results)
    for run in results["runs"]:
        lines += [_row(run["system"], lv, ref, best.get(lv["concurrency"])) for lv in run["levels"]]
    lines += [f"\n**{name} did not start**: {error}" for name, error in results.get("failed", {}).items()]
    lines += _against_peers(results, best)
    lines += _targets(results, best)
    sporadic = [run for run in results["runs"] if "sporadic" in run]
    if sporadic:
        gap = sporadic[0]["sporadic"]["gap_ms"]
        lines += [
            "",
            f"Sporadic requests (one client pausing {gap:g} ms after each answer: the server idles between",
            "requests, as most servers do most of the day):",
            "",
            "| system | requests | p50 ms | p95 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for run in sporadic:
            sp = run["sporadic"]
            lines.append(
                f"| {run['system']} | {sp['ok']} | {sp['p50_ms']:.1f} | {sp['p95_ms']:.1f} "
                f"| {sp['p99_ms']:.1f} | {_errors(sp)} |"
            )
    lines += [
        "",
        "Server core-ms/image: the CPU time of the system's processes (all threads, gunicorn's workers",
        "included) per answered image: their sum, then each process in start order (model server first).",
        "A peer's is its whole process tree. × best peer: images/s over the best peer's at the same c.",
        "",
        "Resident memory (MB) at the end of each run:",
        "",
    ]
    for run in results["runs"]:
        for proc, rss in run["rss_mb"].items():
            shown = ", ".join(f"{v:.0f}" for v in rss.values())
            lines.append(f"- {run['system']} / {proc}: {shown} (process first, then its workers)")
    lines += ["", "Summary:", "", "```", summary_lines(results), "```", ""]
    return "\n".join(lines)


def _row(system: str, lv: dict, ref: dict, best: tuple[str, float] | None) -> str:
    m = lv.get("model_metrics", {})
    queue = _mean(m, "zerolens_model_queue_seconds")
    rps = lv["throughput_rps"]
    rounds = lv.get("rounds_rps", [])
    spread = f" ({min(rounds):.1f}–{max(rounds):.1f})" if len(rounds) > 1 else ""
    return (
        f"| {system} | {lv['concurrency']} | {rps:.1f}{spread} "
        f"| {rps / ref['ceiling_rps']:.2f} | {rps / ref['limit_rps']:.2f} "
        f"| {_fmt(rps / best[1] if best and best[1] else None, 2)} "
        f"| {lv['p50_ms']:.1f} | {lv['p95_ms']:.1f} | {lv['p99_ms']:.1f} "
        f"| {_errors(lv)} "
        f"| {_fmt(_mean(m, 'zerolens_model_batch_size'), 2)} "
        f"| {_fmt(queue * 1000 if queue is not None else None)} | {_core_ms(lv)} "
        f"| {_fmt(lv.get('busy_pct'), 0)} % | {lv['client_cpu_s']:.1f} |"
    )


def best_peer(results: dict) -> dict[int, tuple[str, float]]:
    """Per concurrency level, the peer serving system with the most images/s: (its name, images/s)."""
    out: dict[int, tuple[str, float]] = {}
    for run in results["runs"]:
        if run["system"] not in results.get("peers", []):
            continue
        for lv in run["levels"]:
            c, rps = lv["concurrency"], lv["throughput_rps"]
            if c not in out or rps > out[c][1]:
                out[c] = (run["system"], rps)
    return out


def _against_peers(results: dict, best: dict[int, tuple[str, float]], c: int = 16) -> list[str]:
    """Each system's throughput at c=16 as a multiple of the best peer's there."""
    if c not in best or not best[c][1]:
        return []
    name, rps = best[c]
    lines = ["", f"At c={c}, against the best peer ({name}, {rps:.1f} images/s):", ""]
    for run in results["runs"]:
        level = next((lv for lv in run["levels"] if lv["concurrency"] == c), None)
        if level is not None:
            lines.append(f"- {run['system']}: {level['throughput_rps'] / rps:.2f}×")
    return lines


def _level(results: dict, system: str, c: int) -> dict | None:
    run = next((r for r in results["runs"] if r["system"] == system), None)
    return None if run is None else next((lv for lv in run["levels"] if lv["concurrency"] == c), None)


def _targets(results: dict, best: dict[int, tuple[str, float]], system: str = "zerolens-tflite") -> list[str]:
    """The performance targets, each a ratio from this run (shown only for the systems that ran)."""
    ref, lines = results["reference"], []
    c16, c1 = _level(results, system, 16), _level(results, system, 1)
    if c16 is not None and 16 in best:
        lines.append(f"- c=16 vs the best peer: {c16['throughput_rps'] / best[16][1]:.2f}× (target ≥ 1.2×)")
    if c16 is not None and c16.get("core_ms_per_image"):
        cost = sum(c16["core_ms_per_image"].values())
        limit = ref["decode_core_ms"] + ref["inference_core_ms"]
        lines.append(
            f"- server core-ms per image at c=16: {cost:.1f} vs the limit's {limit:.1f}: {cost / limit:.2f}× "
            "(target ≤ 1.15×)"
        )
    if c1 is not None:
        extra = c1["p50_ms"] - ref["ceiling_latency_ms"]
        lines.append(f"- p50 at c=1: ceiling {extra:+.1f} ms (target ≤ +2 ms)")
    ratios = []
    for lv in next((r["levels"] for r in results["runs"] if r["system"] == system), []):
        other = _level(results, "in-process", lv["concurrency"])
        if other is not None and other["throughput_rps"]:
            ratios.append(f"c={lv['concurrency']} {lv['throughput_rps'] / other['throughput_rps']:.2f}×")
    if ratios:
        lines.append(f"- against in-process: {', '.join(ratios)} (target ≥ 1× at each)")
    int8 = _level(results, "zerolens-int8", 16)
    if int8 is not None and c16 is not None:
        lines.append(
            f"- int8 vs float at c=16: {int8['throughput_rps'] / c16['throughput_rps']:.2f}× (target ≥ 1.5×)"
        )
    return ["", f"Targets ({system}):", "", *lines] if lines else []


def _drift(runs: list[dict]) -> list[str]:
    """How far the references measured before and after the systems differ (the ratios use their mean)."""
    if len(runs) != 2:
        return []
    first, last = runs
    return [
        f"- measured before and after the systems (the ratios use the mean): ceiling "
        f"{first['ceiling_latency_ms']:.1f} → {last['ceiling_latency_ms']:.1f} ms per image, decode "
        f"{first['decode_core_ms']:.2f} → {last['decode_core_ms']:.2f}, inference "
        f"{first['inference_core_ms']:.2f} → {last['inference_core_ms']:.2f} core-ms"
    ]


def _rounds(count: int) -> list[str]:
    if count < 2:
        return []
    return [
        f"{count} rounds, every system once per round in alternating order; each row is the round with the "
        "median images/s, (min–max) over the rounds beside it."
    ]


def _errors(level: dict) -> str:
    return ", ".join(f"{status}: {n}" for status, n in level["errors"].items()) or "–"


def _core_ms(level: dict) -> str:
    per_process = list(level.get("core_ms_per_image", {}).values())
    if not per_process:
        return "–"
    total = f"{sum(per_process):.1f}"
    return total if len(per_process) == 1 else f"{total} ({' + '.join(f'{v:.1f}' for v in per_process)})"


def summary_lines(results: dict) -> str:
    """One line per system: best throughput and its ratios, latency at c=1."""
    ref = results["reference"]
    out = []
    for run in results["runs"]:
        levels = run["levels"]
        best = max(levels, key=lambda lv: lv["throughput_rps"])
        first = levels[0]
        out.append(
            f"{run['system']:>15}: {best['throughput_rps']:7.1f} img/s at c={best['concurrency']:<3} "
            f"({best['throughput_rps'] / ref['ceiling_rps']:.2f}× ceiling, "
            f"{best['throughput_rps'] / ref['limit_rps']:.2f}× limit); "
            f"p50 at c={first['concurrency']}: {first['p50_ms']:.1f} ms "
            f"(ceiling {ref['ceiling_latency_ms']:.1f} ms)"
            + (f"; sporadic {run['sporadic']['p50_ms']:.1f} ms" if "sporadic" in run else "")
        )
    return "\n".join(out)


def plots(results: dict, out: Path) -> list[Path]:
    """throughput.png, latency.png and batch_sizes.png in out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = results["reference"]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in results["runs"]:
        cs = [lv["concurrency"] for lv in run["levels"]]
        peer = run["system"] in results.get("peers", [])  # peers dashed
        ys = [lv["throughput_rps"] for lv in run["levels"]]
        ax.plot(cs, ys, marker="o", linestyle="--" if peer else "-", label=run["system"])
    ax.axhline(ref["ceiling_rps"], linestyle="--", color="grey", label="ceiling (in-process)")
    ax.axhline(ref["limit_rps"], linestyle=":", color="black", label="core-cost limit")
    ax.set(xscale="log", xlabel="concurrent clients", ylabel="images/s", title="Throughput")
    ax.legend()
    paths.append(out / "throughput.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in results["runs"]:
        cs = [lv["concurrency"] for lv in run["levels"]]
        line = ax.plot(cs, [lv["p50_ms"] for lv in run["levels"]], marker="o", label=f"{run['system']} p50")
        ax.plot(
            cs, [lv["p99_ms"] for lv in run["levels"]], linestyle="--", color=line[0].get_color(), label="p99"
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent clients",
        ylabel="ms",
        title="Latency (p50, p99 dashed)",
    )
    ax.legend(fontsize=7)
    paths.append(out / "latency.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in results["runs"]:
        for lv in run["levels"]:
            hist = batch_histogram(lv.get("model_metrics", {}))
            if hist and lv["concurrency"] == max(x["concurrency"] for x in run["levels"]):
                xs = [str(int(k)) for k in hist]
                ax.bar(xs, list(hist.values()), alpha=0.6, label=f"{run['system']} c={lv['concurrency']}")
    ax.set(xlabel="batch size (bucket upper bound)", ylabel="model calls", title="Batch sizes")
    if ax.get_legend_handles_labels()[0]:  # only zerolens's model server reports its batches
        ax.legend()
    paths.append(out / "batch_sizes.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close("all")
    return paths
