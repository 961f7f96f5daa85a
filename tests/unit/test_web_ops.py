"""Probes, /metrics (single and multiprocess) and the promise that uploads never touch the disk."""

from __future__ import annotations

import io
import os
import runpy
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import werkzeug.formparser
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from services.config import WebConfig
from services.protocol import Status
from services.web.model_client import ModelTimeout, ModelUnavailable
from tests.support.environ import clean_environ

REPO = Path(__file__).resolve().parents[2]


def test_healthz_is_always_ok(client, fake_model) -> None:
    fake_model.raises = ModelUnavailable("down")
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    assert fake_model.pings == 0  # liveness never depends on the model servers


def test_readyz_when_a_model_server_answers(client, fake_model) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "model": "fake_net"}


@pytest.mark.parametrize(
    ("raises", "status", "reason"),
    [
        (
            ModelUnavailable("no model server reachable at tcp://10.0.0.1:5576"),
            None,
            "no model server reachable",
        ),
        (ModelTimeout("no model server answered within 1000 ms"), None, "within 1000 ms"),
        (None, Status.OVERLOADED, "model server answered OVERLOADED: draining"),
    ],
)
def test_readyz_is_503_with_a_reason(client, fake_model, raises, status, reason: str) -> None:
    fake_model.raises = raises
    if status is not None:
        fake_model.status, fake_model.error = status, "draining"
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready" and reason in body["reason"]


def test_metrics_expose_request_and_model_series(client, cat_jpeg) -> None:
    client.post("/api/v1/predict", data={"image": cat_jpeg.as_file()})
    client.get("/no/such/page")
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert 'zerolens_web_http_requests_total{code="200",route="/api/v1/predict"}' in text
    assert 'zerolens_web_http_requests_total{code="404",route="unmatched"}' in text  # no raw paths as labels
    assert 'zerolens_web_http_request_seconds_bucket{le="0.005",route="/api/v1/predict"}' in text
    for name in (
        "zerolens_web_model_roundtrip_seconds",
        "zerolens_web_model_calls",
        "zerolens_web_model_retries",
    ):
        assert f"# TYPE {name}" in text


def test_metrics_sum_over_workers_in_multiprocess_mode(tmp_path: Path) -> None:
    """As under gunicorn: PROMETHEUS_MULTIPROC_DIR set before prometheus-client is imported."""
    script = textwrap.dedent(
        """
        from services.web import create_app
        app = create_app({"TESTING": True, "model_server": "tcp://127.0.0.1:9"})
        with app.test_client() as client:
            client.get("/healthz")
            print(client.get("/metrics").get_data(as_text=True))
        """
    )
    env = clean_environ(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert 'zerolens_web_http_requests_total{code="200",route="/healthz"} 1.0' in done.stdout
    assert list(tmp_path.glob("counter_*.db")) and list(tmp_path.glob("histogram_*.db"))


def test_large_uploads_stay_in_memory(client, fake_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Werkzeug would spool this 1 MB+ file part to a temporary file; zerolens keeps it in memory."""

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile"):
        monkeypatch.setattr(werkzeug.formparser, name, no_disk, raising=False)
        monkeypatch.setattr(tempfile, name, no_disk)
    noise = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=0)
    assert buf.tell() > 1_000_000
    # encoded here, in memory: the test client itself would otherwise stage a body this big in a temp file
    boundary, body = encode_multipart({"image": FileStorage(io.BytesIO(buf.getvalue()), "noise.png")})
    response = client.post("/uploader", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 200
    assert fake_model.calls[0]["image"] == buf.getvalue()


def test_gunicorn_config_sets_up_multiprocess_metrics(clean_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROLENS_ZMQ_SECURITY", "plaintext")  # the config file checks the CurveZMQ keys
    settings = runpy.run_path(str(REPO / "services/web/gunicorn.conf.py"))
    assert settings["worker_class"] == "services.web.front.BufferingThreadWorker"
    assert settings["wsgi_app"] == "services.web:create_app()"
    assert settings["graceful_timeout"] * 1000 >= WebConfig().request_timeout_ms
    nothing_to_bind = SimpleNamespace(reuse_port=False, address=[])
    server = SimpleNamespace(log=SimpleNamespace(info=lambda *args: None), cfg=nothing_to_bind)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored after the test; the hook replaces it
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    settings["on_starting"](server)
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert path.is_dir()
    # a worker that has served: it inherits the directory, counts a request and sets a live gauge, then exits
    worker_script = textwrap.dedent(
        """
        import os
        from prometheus_client import Counter, Gauge
        Counter("worker_requests", "requests served").inc()
        Gauge("worker_busy_threads", "busy threads", multiprocess_mode="livesum").set(1)
        print(os.getpid())
        """
    )
    worker = subprocess.run(
        [sys.executable, "-c", worker_script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert worker.returncode == 0, worker.stderr
    pid = int(worker.stdout)
    live, counted = path / f"gauge_livesum_{pid}.db", path / f"counter_{pid}.db"
    assert live.is_file() and counted.is_file()
    settings["child_exit"](server, SimpleNamespace(pid=pid))
    assert not live.exists()  # a dead worker's live gauges stop counting
    assert counted.is_file()  # its counters still add to the totals
    settings["on_exit"](server)
    assert not path.exists()
