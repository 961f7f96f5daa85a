"""`make bench`: every system side by side on the same photos, with ratios to the in-process references.

Systems: zerolens (tflite and keras runtimes, CurveZMQ between the tiers; zerolens-int8: tflite with the
int8 model; zerolens-plaintext: tflite without CurveZMQ, which prices the encryption; zerolens-gthread:
tflite under gunicorn's plain gthread worker, which prices the web tier's slow-client-safe worker),
in-process (the model inside the Flask worker), seed (the naive design zerolens started from) and the
peers: Triton, Mosec and LitServe serving the same TFLite model with the same preprocessing, each from its
own venv (bench/peers; --no-peers skips them). Each is started on free loopback ports, warmed up, then
driven by the closed-loop load generator at each concurrency level for a fixed duration. Results go to
bench/results/<time>/: results.json, results.md and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from bench import ceiling, loadgen, report
from bench.peers import PEERS, launcher
from bench.photos import Photo, photo_set
from tests.support.servers import (
    BIN,
    ROOT,
    Proc,
    ensure_model,
    free_port,
    machine_busy_s,
    model_server,
    web_server,
)

# zerolens variants: the model runtime, the ZeroMQ security, extra gunicorn arguments
ZEROLENS = {
    "zerolens-tflite": ("tflite", "curve", []),
    "zerolens-plaintext": ("tflite", "plaintext", []),
    "zerolens-gthread": ("tflite", "curve", ["--worker-class", "gthread"]),  # the command line beats the file
    "zerolens-keras": ("keras", "curve", []),
    "zerolens-int8": ("tflite", "curve", []),
}
VARIANT_SETTINGS = {"zerolens-int8": {"model_precision": "int8"}}  # model server settings of a variant
SYSTEMS = (*ZEROLENS, "in-process", "seed", *PEERS)


def _gunicorn(tmp: Path, name: str, app: str, env: dict[str, str], workers: int = 2) -> Proc:
    port = free_port()
    return Proc(
        name=name,
        argv=[str(BIN / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}", "--timeout", "120", app],
        env={**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        ready_url=f"http://127.0.0.1:{port}/healthz",
        log_path=tmp / f"{name}.log",
        ports={"http": port},
    )


def start_system(
    name: str, tmp: Path, settings: dict[str, str], web_settings: dict[str, str]
) -> tuple[list[Proc], str, str | None]:
    """Start one system; returns its processes (model first), the predict URL and a metrics URL."""
    if name in PEERS:
        peer, url, _ = launcher.start(name, tmp)
        return [peer], url, None
    if name in ZEROLENS:
        runtime, security, gunicorn_args = ZEROLENS[name]
        model_settings = VARIANT_SETTINGS.get(name, {}) | settings
        model = model_server(tmp, runtime=runtime, zmq_security=security, **model_settings)
        model.start(timeout_s=180)
        # if the web tier fails to start, the atexit net in tests.support.servers stops the model server
        web = web_server(tmp, model.ports["zmq"], zmq_security=security, **web_settings)
        web.argv += gunicorn_args
        web.start()
        metrics = f"http://127.0.0.1:{model.ports['health']}/metrics"
        return [model, web], f"http://127.0.0.1:{web.ports['http']}/api/v1/predict", metrics
    if name == "in-process":
        env = {"ZEROLENS_MODEL_DIR": str(ensure_model()), "ZEROLENS_INFERENCE_THREADS": "1"}
        web = _gunicorn(tmp, name, "bench.baselines.inprocess:create_app()", env).start()
        return [web], f"http://127.0.0.1:{web.ports['http']}/api/v1/predict", None
    if name == "seed":
        port = free_port()
        model = Proc(
            name="seed model server",
            argv=[sys.executable, "-m", "bench.baselines.seed", "server", str(port), str(ensure_model())],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            ready_url="log:seed model server ready",
            log_path=tmp / "seed-model.log",
        ).start(timeout_s=180)
        web = _gunicorn(tmp, "seed-web", "bench.baselines.seed:create_app()", {"SEED_MODEL_PORT": str(port)})
        web.start()
        return [model, web], f"http://127.0.0.1:{web.ports['http']}/api/v1/predict", None
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")


def scrape(url: str | None) -> dict[str, float]:
    """The model server's counters and histogram buckets, as {sample name with labels: value}."""
    if url is None:
        return {}
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        match = re.match(r"^(zerolens_model_(?:batch_size|queue_seconds|inference_seconds)\S*) (\S+)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def median_round(rounds: list[dict]) -> dict:
    """One system's runs (bench_system's, one per round) as one: each level is the round with the median
    images/s (the lower of the middle two for an even count), whole, so its latencies and costs stay that
    round's, with every round's images/s in `rounds_rps`; the sporadic level likewise by p50; the memory of
    the last round."""

    def median(rows: list[dict], key: str, spread: str) -> dict:
        ordered = sorted(rows, key=lambda row: row[key])
        return ordered[(len(ordered) - 1) // 2] | {spread: [row[key] for row in rows]}

    by_level = zip(*(r["levels"] for r in rounds), strict=True)
    run = rounds[-1] | {"levels": [median(list(rows), "throughput_rps", "rounds_rps") for rows in by_level]}
    if "sporadic" in run:
        run["sporadic"] = median([r["sporadic"] for r in rounds], "p50_ms", "rounds_p50_ms")
    return run | {"rounds": len(rounds)}


def bench_system(
    name: str,
    tmp: Path,
    bodies: list[loadgen.Body],
    levels: list[int],
    duration_s: float,
    settings: dict[str, str],
    web_settings: dict[str, str],
    progress: Callable[[str], None],
    gap_ms: float = 0.0,
) -> dict:
    """All levels (then, with gap_ms, sporadic single requests) for one system; the processes always stop."""
    procs, url, metrics_url = start_system(name, tmp, settings, web_settings)
    try:
        loadgen.run_level(url, bodies, levels[0], min(3.0, duration_s))  # warm-up, discarded
        results = []
        for c in levels:
            progress(f"{name} c={c}")
            before, busy_before = scrape(metrics_url), machine_busy_s()
            cpu_before = [p.cpu_s() for p in procs]
            level = loadgen.run_level(url, bodies, c, duration_s)
            busy, total = (a - b for a, b in zip(machine_busy_s(), busy_before, strict=True))
            results.append(
                level.summary()
                | {
                    "model_metrics": delta(scrape(metrics_url), before),
                    # what each server process spent per answered image, and how busy the cores were
                    "core_ms_per_image": {
                        p.name: round((p.cpu_s() - c0) * 1000 / max(level.ok, 1), 2)
                        for p, c0 in zip(procs, cpu_before, strict=True)
                    },
                    "busy_pct": round(100 * busy / total, 1) if total else None,
                }
            )
        memory = {p.name: p.rss_mb() for p in procs}
        run = {"system": name, "levels": results, "rss_mb": memory}
        if gap_ms > 0:
            progress(f"{name} one request every {gap_ms:g} ms")
            run["sporadic"] = loadgen.run_level(url, bodies, 1, duration_s, gap_ms / 1000).summary() | {
                "gap_ms": gap_ms
            }
        return run
    finally:
        for proc in reversed(procs):
            proc.stop()


def bodies_for(name: str, photos: list[Photo]) -> list[loadgen.Body]:
    """The same photos, framed as the system takes uploads (a peer: as its docs show)."""
    if name in PEERS:
        return [launcher.SPECS[name].encode(p.data) for p in photos]
    return [loadgen.multipart(p.data, f"{p.name}.jpg") for p in photos]


def _results(
    args: argparse.Namespace,
    photos: list[Photo],
    references: tuple[ceiling.Reference, ceiling.Reference],
    reference: ceiling.Reference,
    runs: list[dict],
    settings: dict[str, str],
    web_settings: dict[str, str],
) -> dict:
    """What results.json holds."""
    return {
        "machine": report.machine(),
        "photos": [
            {"name": p.name, "megapixels": round(p.megapixels, 2), "bytes": len(p.data)} for p in photos
        ],
        "reference": asdict(reference) | {"limit_rps": reference.limit_rps},
        # measured before and after the systems; the ratios use their mean
        "reference_runs": [asdict(r) | {"limit_rps": r.limit_rps} for r in references],
        "duration_s": args.duration,
        "rounds": args.rounds,
        "gap_ms": args.gap_ms,
        "settings": settings,
        "web_settings": web_settings,
        "runs": runs,
        "peers": [run["system"] for run in runs if run["system"] in PEERS],
    }


def _arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The command line, and the systems it names (unknown names are an error)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
    parser.add_argument("--megapixels", default="0,1,2,5", help="photo sizes; 0 = the photo's own size")
    parser.add_argument("--set", action="append", default=[], help="model server setting NAME=VALUE")
    parser.add_argument("--web-set", action="append", default=[], help="web tier setting NAME=VALUE")
    parser.add_argument(
        "--gap-ms", type=float, default=50.0, help="sporadic level: c=1 with this pause (0: skip it)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every system this many times, in alternating order (A B C, C B A, ...) so that drift of a "
        "shared machine falls on all alike; each level reports the round with the median images/s",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip " + ", ".join(PEERS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s and not (args.no_peers and s in PEERS)]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {', '.join(sorted(unknown))}; known: {', '.join(SYSTEMS)}")
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    return args, systems


def main(argv: list[str] | None = None) -> Path:
    args, systems = _arguments(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    sizes = tuple(float(mp) or None for mp in args.megapixels.split(","))
    settings = dict(item.split("=", 1) for item in args.set)
    web_settings = dict(item.split("=", 1) for item in args.web_set)
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    photos = photo_set(sizes)

    per_round = len(systems) * (len(levels) + (args.gap_ms > 0))
    steps = tqdm(total=2 + args.rounds * per_round, desc="bench", unit="step")

    def progress(label: str) -> None:
        steps.set_postfix_str(label)
        steps.update()

    def measure_reference(when: str) -> ceiling.Reference:
        steps.set_postfix_str(f"reference {when} (in-process ceiling and core costs)")
        measured = ceiling.measure(photos, str(ensure_model()), duration_s=max(2.0, args.duration / 3))
        steps.update()
        return measured

    first = measure_reference("before")
    rounds: dict[str, list[dict]] = {name: [] for name in systems}
    failed: dict[str, str] = {}
    level_args = (levels, args.duration, settings, web_settings, progress, args.gap_ms)
    for number in range(args.rounds):
        for name in systems if number % 2 == 0 else systems[::-1]:
            if name in failed:
                continue
            try:
                rounds[name].append(bench_system(name, out, bodies_for(name, photos), *level_args))
            except RuntimeError as exc:  # a system that would not start: the others still run
                failed[name] = str(exc).splitlines()[0]
                print(f"{name} failed: {exc}", file=sys.stderr)
    runs = [median_round(rounds[name]) for name in systems if rounds[name] and name not in failed]
    last = measure_reference("after")
    steps.close()
    reference = ceiling.mean(first, last)
    results = _results(args, photos, (first, last), reference, runs, settings, web_settings)
    results["failed"] = failed
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report.markdown(results))
    report.plots(results, out)
    print(report.summary_lines(results))
    print(f"results: {out}")
    return out


if __name__ == "__main__":
    main()
