"""`python -m bench.gpu`: the keras runtime on an accelerator, alone and behind the model server.

(a) raw: the runtime's forward (on jax, compiled once per batch size) at each batch size, back to back on
    as many threads as the server's inference_workers, from uint8 batches already in host memory:
    host→device transfer, normalisation, inference and the copy back included.
(b) served: the model server (model_runtime=keras, the same backend, max_batch_size = the largest batch
    size) driven over ZeroMQ by client processes on the same machine that send already-decoded pixels
    (rgb8 frames, services/protocol.py), enough in flight to fill max_batch_size.
ratio = (b) / the best of (a); the target is 0.9 or more. Results go to bench/results/<time>-gpu/:
results.json, results.md and the model server's log. Runs on a CPU too (slowly: --batch-sizes 1,2,4).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from bench import rgb8_load
from services.config import ModelConfig
from tests.support.servers import ROOT, ensure_model, model_server

BACKENDS = ("jax", "torch", "tensorflow")
TARGET = 0.9  # (b) / best of (a)
SERVER_START_S = 900  # loading and compiling every batch size of a cold host
WORKERS = ModelConfig.inference_workers  # the model server's default: (a) runs as many streams


def _versions(backend: str) -> dict[str, str]:
    import keras

    module = __import__(backend)
    return {"keras": keras.__version__, backend: module.__version__, "numpy": np.__version__}


def _calls(runtime: Any, batch: np.ndarray, duration_s: float) -> list[float]:
    """Back-to-back calls on `batch` for duration_s: each call's seconds."""
    calls: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        call = time.perf_counter()
        runtime.predict_batch(batch)  # returns host memory: the device has finished
        calls.append(time.perf_counter() - call)
    return calls


def measure_raw(
    backend: str, model_dir: str, sizes: list[int], duration_s: float, streams: int
) -> dict[str, Any]:
    """(a), in a process of its own (the caller's holds no accelerator and loads no Keras): images/s at each
    batch size, with `streams` threads calling at once, as the model server's inference_workers do."""
    os.environ["KERAS_BACKEND"] = backend  # this process's own environment, read when Keras loads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services import config
    from services.model.runtime import load_runtime, warm_up

    settings = {"model_runtime": "keras", "model_dir": model_dir, "max_batch_size": max(sizes)}
    cfg = config.load(config.ModelConfig, settings | {"allowed_batch_sizes": _csv(sizes)}, environ={})
    runtime = load_runtime(cfg)
    warm_up(runtime, sizes)
    side = runtime.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (max(sizes), side, side, 3), np.uint8)
    levels = []
    with ThreadPoolExecutor(streams) as pool:
        for n in sizes:
            started = time.perf_counter()
            batches = [pixels[:n]] * streams
            per_stream = list(pool.map(lambda batch: _calls(runtime, batch, duration_s), batches))
            elapsed = time.perf_counter() - started
            calls = [call for stream in per_stream for call in stream]
            levels.append(
                {
                    "batch_size": n,
                    "calls": len(calls),
                    "images_per_s": n * len(calls) / elapsed,
                    "batch_ms_p50": statistics.median(calls) * 1000,
                }
            )
    return {"device": runtime.device, "versions": _versions(backend), "streams": streams, "levels": levels}


def _csv(sizes: list[int]) -> str:
    return ",".join(str(n) for n in sizes)


def _batch_counts(url: str) -> tuple[float, float]:
    """(images, model calls) the model server has run so far, from its batch-size histogram."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    found = dict(re.findall(r"^zerolens_model_batch_size_(sum|count) (\S+)$", text, re.MULTILINE))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def _server_settings(args: argparse.Namespace, sizes: list[int], window: int) -> dict[str, str]:
    concurrency = window * args.clients
    settings = {
        "max_batch_size": str(max(sizes)),
        "allowed_batch_sizes": _csv(sizes),
        "max_queue_size": str(max(256, 2 * concurrency)),
        "max_in_flight_per_client": str(window),
    }
    return settings | dict(item.split("=", 1) for item in args.set)


def measure_served(args: argparse.Namespace, sizes: list[int], out: Path) -> dict[str, Any]:
    """(b): the model server under closed-loop rgb8 load from args.clients processes."""
    concurrency = args.concurrency or 4 * max(sizes)  # a batch running, the next ones filling
    window = -(-concurrency // args.clients)
    settings = _server_settings(args, sizes, window)
    with tempfile.TemporaryDirectory() as keys_tmp:  # CurveZMQ keys, kept out of the results
        server = model_server(Path(keys_tmp), runtime="keras", zmq_security=args.zmq_security, **settings)
        server.env["KERAS_BACKEND"] = args.backend
        server.log_path = out / "model-server.log"
        with server.start(timeout_s=SERVER_START_S) as proc:
            metrics = f"http://127.0.0.1:{proc.ports['health']}/metrics"
            keys_dir = str(proc.curve_keys_dir) if proc.curve_keys_dir else None
            endpoint = f"tcp://127.0.0.1:{proc.ports['zmq']}"
            load = rgb8_load.Load(endpoint, args.input_size, window, args.duration, keys_dir)
            before: dict[str, float] = {}

            def start() -> None:
                before["images"], before["calls"] = _batch_counts(metrics)
                before["cpu_s"] = proc.cpu_s()

            result = rgb8_load.run(load, args.clients, on_start=start)
            images, calls = _batch_counts(metrics)
            cpu_s = proc.cpu_s() - before.get("cpu_s", 0.0)
    latencies = sorted(result.latencies_s) or [float("nan")]
    return {
        "clients": args.clients,
        "in_flight": window * args.clients,
        "settings": settings,
        "zmq_security": args.zmq_security,
        "ok": result.ok,
        "errors": dict(result.errors),
        "images_per_s": result.ok / args.duration,
        "latency_ms_p50": latencies[len(latencies) // 2] * 1000,
        "latency_ms_p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "mean_batch_size": (images - before.get("images", 0)) / max(1.0, calls - before.get("calls", 0)),
        "server_core_ms_per_image": cpu_s * 1000 / max(1, result.ok),
    }


def _raw_table(raw: dict[str, Any]) -> list[str]:
    rows = [
        f"| {lv['batch_size']} | {lv['images_per_s']:.1f} | {lv['batch_ms_p50']:.2f} |"
        for lv in raw["levels"]
    ]
    return ["| batch size | images/s | ms per batch (p50) |", "|---:|---:|---:|", *rows]


def _served_table(served: dict[str, Any]) -> list[str]:
    errors = ", ".join(f"{k} {v}" for k, v in served["errors"].items()) or "none"
    cells = [
        f"{served['images_per_s']:.1f}",
        f"{served['latency_ms_p50']:.1f} ms",
        f"{served['latency_ms_p99']:.1f} ms",
        f"{served['mean_batch_size']:.1f}",
        f"{served['server_core_ms_per_image']:.2f}",
        errors,
    ]
    return [
        "| images/s | p50 | p99 | mean batch size | server core-ms/image | errors |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {' | '.join(cells)} |",
    ]


def markdown(results: dict[str, Any]) -> str:
    raw, served = results["raw"], results["served"]
    versions = ", ".join(f"{k} {v}" for k, v in raw["versions"].items())
    met = "met" if results["ratio"] >= TARGET else "not met"
    max_batch = served["settings"]["max_batch_size"]
    lines = [
        f"# keras on {results['backend']}: the model alone and behind the model server",
        "",
        f"{results['when']}, device {raw['device']} ({versions}), {results['duration_s']:g} s each.",
        "",
        f"(a) The model alone: uint8 batches from host memory, transfers included, {raw['streams']} streams"
        " (as many as the server's inference_workers).",
        "",
        *_raw_table(raw),
        "",
        f"(b) The model server over ZeroMQ ({served['zmq_security']}): {served['clients']} client processes, "
        f"{served['in_flight']} rgb8 requests in flight, max_batch_size {max_batch}.",
        "",
        *_served_table(served),
        "",
        f"**(b) / best of (a) = {results['ratio']:.2f}** (best: batch {results['best_batch_size']}); "
        f"target {TARGET:g}: {met}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=BACKENDS, default="jax", help="Keras backend (KERAS_BACKEND)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--clients", type=int, default=min(4, os.cpu_count() or 1), help="client processes")
    parser.add_argument("--concurrency", type=int, default=0, help="requests in flight (0: 4 × the largest)")
    parser.add_argument("--zmq-security", choices=("curve", "plaintext"), default="curve")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--set", action="append", default=[], help="model server setting NAME=VALUE")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    sizes = sorted({int(n) for n in args.batch_sizes.split(",") if n.strip()})
    out = Path(args.out) / f"{time.strftime('%Y%m%d-%H%M%S')}-gpu"
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # gone, with its memory, after (a)
        streams = int(dict(item.split("=", 1) for item in args.set).get("inference_workers", WORKERS))
        raw = pool.submit(
            measure_raw, args.backend, str(ensure_model()), sizes, args.duration, streams
        ).result()
    served = measure_served(args, sizes, out)
    best = max(raw["levels"], key=lambda lv: lv["images_per_s"])
    results = {
        "backend": args.backend,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "duration_s": args.duration,
        "raw": raw,
        "served": served,
        "best_batch_size": best["batch_size"],
        "ratio": served["images_per_s"] / best["images_per_s"],
        "target": TARGET,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results), f"\nresults in {out}", sep="")
    return out


if __name__ == "__main__":
    main()
