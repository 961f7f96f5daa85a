"""Closed-loop HTTP load for the drills: every request's start, end and outcome, for counting afterwards."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.loadgen import multipart

HUNG_S = 30.0  # no drill request may take this long: the client gives up and counts it as hung


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
class OpenLoad:
    """Requests sent at a fixed rate whatever the answers (an open loop), over `clients` keep-alive threads.

    The i-th request is due at start + i / rate; a thread takes the next one due. With enough threads the
    rate holds even when answers are slow, which is what an overload looks like from outside.
    """

    port: int
    photo: bytes
    rate: float  # requests per second
    duration_s: float
    clients: int = 64
    outcomes: list[Outcome] = field(default_factory=list)

    def run(self) -> OpenLoad:
        body, ctype = multipart(self.photo, "photo.jpg")
        total = int(self.rate * self.duration_s)
        start = time.monotonic() + 0.2
        lock, taken = threading.Lock(), [0]

        def client() -> None:
            conn: http.client.HTTPConnection | None = None
            while True:
                with lock:
                    i = taken[0]
                    taken[0] += 1
                if i >= total:
                    break
                due = start + i / self.rate
                threading.Event().wait(max(0.0, due - time.monotonic()))  # the schedule, not a sync
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HUNG_S)
                began = time.monotonic()
                try:
                    conn.request("POST", "/api/v1/predict", body=body, headers={"Content-Type": ctype})
                    resp = conn.getresponse()
                    resp.read()
                    result = str(resp.status)
                    if resp.will_close:
                        conn.close()
                        conn = None
                except TimeoutError:
                    result = "hung"
                except OSError as exc:
                    result = f"error: {type(exc).__name__}"
                if (result == "hung" or result.startswith("error")) and conn is not None:
                    conn.close()
                    conn = None
                with lock:
                    self.outcomes.append(Outcome(began, time.monotonic(), result))
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=client, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.duration_s + HUNG_S + 10)
        return self

    def counts(self) -> Counter:
        return Counter(o.result for o in self.outcomes)
