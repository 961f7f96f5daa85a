"""HTTP load generator: uploads real JPEGs at fixed concurrency levels and reports throughput and latency.

Closed loop: each of `c` threads keeps one keep-alive connection and sends its next upload as soon as the
previous answer arrives, for a fixed duration per level. Stdlib only, so it measures the server, not a client
library; its own CPU time is reported because on a 2-core box the client competes with the server.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import statistics
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# A request body: (bytes, content type) or (bytes, content type, extra headers)
Body = tuple[bytes, str] | tuple[bytes, str, dict[str, str]]
OIP_HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class LevelResult:
    concurrency: int
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)  # successful requests only
    statuses: Counter = field(default_factory=Counter)
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "throughput_rps": round(self.throughput, 2),
            "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 2) if self.latencies_ms else None,
            "ok": self.ok,
            "errors": {str(k): v for k, v in self.statuses.items() if k != 200},
            "client_cpu_s": round(self.client_cpu_s, 2),
        }


def multipart(image: bytes, filename: str = "photo.jpg") -> tuple[bytes, str]:
    """A multipart/form-data body with the photo in the field `image`."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f"--{boundary}\r\n".encode())
    body.write(f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'.encode())
    body.write(b"Content-Type: image/jpeg\r\n\r\n")
    body.write(image)
    body.write(f"\r\n--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def oip_binary(image: bytes, input_name: str = "image", output_name: str = "probabilities") -> Body:
    """An Open Inference Protocol infer body with the binary tensor extension: one BYTES element, the photo.

    The JSON header comes first (its length in Inference-Header-Content-Length), then the tensor: each BYTES
    element is a 4-byte little-endian length and its bytes. The output is asked for in binary too.
    """
    tensor = struct.pack("<I", len(image)) + image
    header = {
        "inputs": [
            {
                "name": input_name,
                "shape": [1, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(tensor)},
            }
        ],
        "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + tensor, "application/octet-stream", {OIP_HEADER_LENGTH: str(len(head))}


def raw(image: bytes) -> Body:
    """The photo itself as the body."""
    return image, "image/jpeg"


def json_base64(image: bytes, field: str = "image") -> Body:
    """A JSON object with the photo base64-encoded in `field`."""
    return json.dumps({field: base64.b64encode(image).decode()}).encode(), "application/json"


def headers(body: Body) -> dict[str, str]:
    return {"Content-Type": body[1], **(body[2] if len(body) > 2 else {})}


def run_level(
    url: str, bodies: list[Body], concurrency: int, duration_s: float, gap_s: float = 0.0
) -> LevelResult:
    """Run `concurrency` closed-loop clients for duration_s against url, each pausing gap_s between requests.

    A gap makes the traffic sporadic: the server sits idle between requests, as most servers do most of
    the day, and its latency then includes whatever an idle spell costs (threads and CPUs going to sleep).
    """
    parts = urlsplit(url)
    result = LevelResult(concurrency, duration_s)
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        latencies, statuses = [], Counter()
        n = index
        start_barrier.wait()
        while time.monotonic() < stop_at[0]:
            body = bodies[n % len(bodies)]
            n += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body[0], headers=headers(body))
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                status = 0  # connection error
            elapsed_ms = (time.perf_counter() - t0) * 1000
            statuses[status] += 1
            if status == 200:
                latencies.append(elapsed_ms)
            if gap_s:
                time.sleep(gap_s)
        conn.close()
        with lock:
            result.latencies_ms.extend(latencies)
            result.statuses.update(statuses)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    stop_at[0] = time.monotonic() + duration_s
    start_barrier.wait()
    for t in threads:
        t.join()
    result.client_cpu_s = time.process_time() - cpu0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/api/v1/predict")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the first level, discarded")
    parser.add_argument("--raw", action="store_true", help="send each photo as the body (image/jpeg)")
    parser.add_argument(
        "--oip", action="store_true", help="Open Inference Protocol binary body (a Triton /infer URL)"
    )
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause after each answer (sporadic load)")
    parser.add_argument("images", nargs="+", help="JPEG files to upload, round-robin")
    args = parser.parse_args()
    encode = oip_binary if args.oip else raw if args.raw else multipart
    bodies = [encode(Path(path).read_bytes()) for path in args.images]
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.warmup > 0:
        run_level(args.url, bodies, levels[0], args.warmup)
    for c in levels:
        level = run_level(args.url, bodies, c, args.duration, args.gap_ms / 1000)
        print(json.dumps(level.summary()), flush=True)


if __name__ == "__main__":
    main()
