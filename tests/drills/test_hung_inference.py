"""F9: a runtime call that never returns, in one of two inference workers, behind a real gunicorn web tier."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from services.model.server import HUNG_AFTER_TIMEOUTS
from tests.drills.fakes import InProcess
from tests.drills.load import timed_predict
from tests.support.servers import http_status, web_server

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0  # inference_timeout_s here; the chart's readiness probe runs every 5 s with 5 s
REQUEST_TIMEOUT_MS = 3000


@pytest.fixture
def model() -> Iterator[InProcess]:
    made = InProcess(
        inference_timeout_s=TIMEOUT_S, inference_workers=2, max_batch_size=1, max_batch_delay_ms=0
    )
    try:
        yield made
    finally:
        made.close()


def _poll(check, timeout_s: float) -> float | None:
    """Seconds until check() is true (polled every 50 ms), or None at the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        threading.Event().wait(0.05)
    return None


def test_a_hung_inference_is_a_504_then_unready_then_dead(model, tmp_path, photos, spawn, drill_record):
    runtime = model.runtime
    settings = {"zmq_security": "plaintext", "request_timeout_ms": REQUEST_TIMEOUT_MS, "retries": 0}
    web = spawn(web_server(tmp_path, model.port, attempt_timeout_ms=REQUEST_TIMEOUT_MS, **settings))
    port, data = web.ports["http"], photos["coffee.jpg"].data
    readyz = model.url("/readyz")
    assert timed_predict(port, data)[0] == 200 and http_status(readyz) == 200

    runtime.hang()
    hung: list[tuple[int, float]] = []
    victim = threading.Thread(target=lambda: hung.append(timed_predict(port, data)))
    victim.start()
    assert _poll(lambda: runtime.hung_at is not None, 10) is not None
    others = [timed_predict(port, data) for _ in range(5)]  # the other inference worker still serves
    unready_s = _poll(lambda: http_status(readyz) == 503, 10)
    unready_s = None if unready_s is None else time.monotonic() - runtime.hung_at
    victim.join(30)
    dead_s = _poll(lambda: not model.server.liveness()[0], 10 * TIMEOUT_S)
    dead_s = None if dead_s is None else time.monotonic() - runtime.hung_at
    livez = http_status(model.url("/livez"))
    runtime.release()  # the call returns at last: the server is ready again by itself
    recovered_s = _poll(lambda: http_status(readyz) == 200, 10)
    after = timed_predict(port, data)[0]
    drill_record(
        "F9",
        f"a hung inference call (inference_timeout_s {TIMEOUT_S:g} s), 2 inference workers",
        hung_request_status=hung[0][0] if hung else "none",
        hung_request_s=round(hung[0][1], 2) if hung else "-",
        request_deadline_s=REQUEST_TIMEOUT_MS / 1000,
        others_served_meanwhile=sum(code == 200 for code, _ in others),
        unready_after_s=round(unready_s, 2) if unready_s else "never",
        liveness_failed_after_s=round(dead_s, 2) if dead_s else "never",
        livez_status=livez,
        ready_again_after_release_s=round(recovered_s, 2) if recovered_s is not None else "never",
        status_after_release=after,
    )
    assert hung and hung[0][0] == 504
    assert REQUEST_TIMEOUT_MS / 1000 - 0.2 <= hung[0][1] <= REQUEST_TIMEOUT_MS / 1000 + 1.0
    assert [code for code, _ in others] == [200] * 5
    assert unready_s is not None and unready_s <= 2 * TIMEOUT_S
    assert dead_s is not None and dead_s <= (HUNG_AFTER_TIMEOUTS + 1) * TIMEOUT_S and livez == 503
    assert recovered_s is not None and after == 200
