"""F3, F12: gunicorn stopped (SIGTERM) or recycling its workers under load: nothing reset, nothing lost."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections import Counter

import pytest

from tests.drills.load import Load
from tests.support.servers import model_server, web_server

pytestmark = pytest.mark.integration

CLIENTS = 16


def _post(port: int, data: bytes) -> str:
    """One upload on a fresh connection: its HTTP status, or how the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/v1/predict", body=data, headers={"Content-Type": "image/jpeg"})
        return str(conn.getresponse().status)
    except ConnectionRefusedError:
        return "refused"  # after the listener closed: never established, nothing lost
    except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError) as exc:
        return f"reset ({type(exc).__name__})"
    finally:
        conn.close()


def test_sigterm_under_load_resets_nothing(tmp_path, photos, spawn, drill_record):
    model = spawn(model_server(tmp_path))
    web = spawn(web_server(tmp_path, model.ports["zmq"]))
    port, data = web.ports["http"], photos["coffee.jpg"].data
    outcomes: list[tuple[float, str]] = []
    lock = threading.Lock()
    warmed = threading.Barrier(CLIENTS + 1)

    def client() -> None:
        first = _post(port, data)
        with lock:
            outcomes.append((time.monotonic(), first))
        warmed.wait()
        while True:  # until the server is gone
            result = _post(port, data)
            with lock:
                outcomes.append((time.monotonic(), result))
            if result == "refused":
                return

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    warmed.wait()
    stopped_at = time.monotonic()
    web.proc.send_signal(signal.SIGTERM)
    exit_code = web.proc.wait(60)
    for t in threads:
        t.join(60)
    after = Counter(result for at, result in outcomes if at >= stopped_at)
    resets = sum(n for result, n in after.items() if result.startswith("reset"))
    drill_record(
        "F3",
        f"SIGTERM to gunicorn under c={CLIENTS}",
        answered_after_sigterm=after["200"],
        other_outcomes=sum(after.values()) - after["200"] - after["refused"] - resets,
        reset_connections=resets,
        refused_after_close=after["refused"],
        exit_code=exit_code,
    )
    assert exit_code == 0
    assert resets == 0, after
    assert set(after) <= {"200", "refused"}, after


def test_f12_recycled_workers_lose_nothing(tmp_path, photos, spawn, drill_record):
    requests_ = 1000
    model = spawn(model_server(tmp_path))
    web = web_server(tmp_path, model.ports["zmq"])
    web.argv += ["--max-requests", "50"]  # each worker is replaced after 50 requests
    spawn(web)
    pids: set[int] = set()
    with Load(web.ports["http"], photos["coffee.jpg"].data, clients=8) as load:
        while not load.wait_count(requests_, timeout_s=0.1):
            pids.update(web.rss_mb())  # the master and whichever workers are alive now
    counts = load.counts()
    drill_record(
        "F12",
        "gunicorn --max-requests 50 under c=8",
        requests=sum(counts.values()),
        answered_200=counts["200"],
        errors=sum(counts.values()) - counts["200"],
        worker_processes_seen=len(pids) - 1,
    )
    assert sum(counts.values()) >= requests_
    assert set(counts) == {"200"}, counts
    assert len(pids) - 1 > 2  # workers really were replaced
