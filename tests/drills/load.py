"""Closed-loop HTTP load for the drills: every request's start, end and outcome, for counting afterwards."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from bench.loadgen import multipart

HUNG_S = 30.0  # no drill request may take this long: the client gives up and counts it as hung
# A refusal that waited for nothing: well under one attempt's 4 s timeout, with room for a loaded 2-core
# machine, where 64 load threads and a draining server can delay a 20 ms answer past half a second.
FAST_REFUSAL_S = 2.0


@dataclass(frozen=True)
class Outcome:
    start: float  # time.monotonic()
    end: float
    result: str  # the HTTP status ("200", "503" …), or "reset", "refused", "hung", "error: …"
    label: str = ""  # a 200's best prediction

    @property
    def latency_s(self) -> float:
        return self.end - self.start


@dataclass
class Load:
    """`clients` threads posting `photo` to the web tier until stopped, a fresh answer after each answer."""

    port: int
    photo: bytes
    clients: int
    keepalive: bool = True
    host: str = "127.0.0.1"
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self._body, self._type = multipart(self.photo, "photo.jpg")
        self.first_answers = threading.Barrier(self.clients + 1)  # every client answered once

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        first = True
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=HUNG_S)
            start, label = time.monotonic(), ""
            try:
                conn.request("POST", "/api/v1/predict", body=self._body, headers={"Content-Type": self._type})
                resp = conn.getresponse()
                body = resp.read()
                result = str(resp.status)
                if resp.status == 200:
                    label = json.loads(body)["predictions"][0]["label"]
                if not self.keepalive or resp.will_close:
                    conn.close()
                    conn = None
            except TimeoutError:
                result = "hung"
            except ConnectionRefusedError:
                result = "refused"
            except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
                result = "reset"
            except OSError as exc:
                result = f"error: {type(exc).__name__}"
            if result in ("hung", "refused", "reset") or result.startswith("error"):
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.outcomes.append(Outcome(start, time.monotonic(), result, label))
            if first:
                first = False
                self.first_answers.wait()
        if conn is not None:
            conn.close()

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        self.first_answers.wait()  # the load is running when every client has had an answer
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(HUNG_S + 5)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        """Requests started in [start, end)."""
        with self._lock:
            return [o for o in self.outcomes if start <= o.start < end]

    def counts(self, start: float = 0.0, end: float = float("inf")) -> Counter:
        return Counter(o.result for o in self.between(start, end))

    def first(self, result: str, after: float) -> Outcome | None:
        """The first request started after `after` that ended with `result`."""
        matching = [o for o in self.between(after) if o.result == result]
        return min(matching, key=lambda o: o.start, default=None)

    def wait_count(self, count: int, timeout_s: float) -> bool:
        """Wait (polling) until `count` requests have been answered; False at the timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < count and time.monotonic() < deadline:
            self._stop.wait(0.05)
        return len(self.outcomes) >= count

    def wait_for(self, result: str, after: float, timeout_s: float) -> Outcome | None:
        """Wait (polling the outcomes) until a request started after `after` ends with `result`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (found := self.first(result, after)) is not None:
                return found
            self._stop.wait(0.05)
        return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass
class AsyncLoad:
    """Requests from one asyncio loop, each on a connection of its own (Connection: close).

    `open_loop`: the i-th request at start + i / rate whatever the answers, as an overload looks from outside
    (a thread per request could not keep the pace). `closed_loop`: `clients` tasks each sending its next
    request when the last is answered, for the capacity, measured with the same client and the same costs.
    """

    port: int
    photo: bytes
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        body, ctype = multipart(self.photo, "photo.jpg")
        head = (
            f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self._request = head + body

    def open_loop(self, rate: float, duration_s: float) -> AsyncLoad:
        asyncio.run(self._open(rate, duration_s))
        return self

    def closed_loop(self, clients: int, duration_s: float) -> AsyncLoad:
        asyncio.run(self._closed(clients, duration_s))
        return self

    async def _open(self, rate: float, duration_s: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1
        tasks = []
        for i in range(int(rate * duration_s)):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))  # the schedule, not a sync
            tasks.append(asyncio.create_task(self._one()))
        await asyncio.gather(*tasks)

    async def _closed(self, clients: int, duration_s: float) -> None:
        end = time.monotonic() + duration_s

        async def client() -> None:
            while time.monotonic() < end:
                await self._one()

        await asyncio.gather(*(client() for _ in range(clients)))

    async def _one(self) -> None:
        began = time.monotonic()
        writer = None
        try:
            async with asyncio.timeout(HUNG_S):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(self._request)
                status_line = await reader.readline()
                await reader.read()  # Connection: close: the answer ends with the connection
            parts = status_line.split(b" ", 2)
            result = parts[1].decode() if len(parts) > 1 else "reset"
        except TimeoutError:
            result = "hung"
        except ConnectionRefusedError:
            result = "refused"
        except (ConnectionResetError, BrokenPipeError):
            result = "reset"
        except OSError as exc:
            result = f"error: {type(exc).__name__}"
        finally:
            if writer is not None:
                writer.close()
        self.outcomes.append(Outcome(began, time.monotonic(), result))

    def counts(self) -> Counter:
        return Counter(o.result for o in self.outcomes)


def timed_predict(port: int, data: bytes, filename: str = "photo.jpg") -> tuple[int, float]:
    """One upload to the web tier on `port`: its HTTP status and how long it took (s)."""
    start = time.monotonic()
    resp = requests.post(
        f"http://127.0.0.1:{port}/api/v1/predict",
        files={"image": (filename, data, "image/jpeg")},
        timeout=30,
    )
    return resp.status_code, time.monotonic() - start
