"""Integration fixtures: a real model server and a real gunicorn web tier, shared per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.servers import Proc, model_server, web_server


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[Proc, Proc]]:
    """A real model server (TFLite) and a real gunicorn web tier, shared by a test module."""
    tmp = tmp_path_factory.mktemp("stack")
    model = model_server(tmp, max_batch_delay_ms=10)
    web = web_server(tmp, 0)
    try:
        model.start()
        web.env["ZEROLENS_MODEL_SERVER"] = f"127.0.0.1:{model.ports['zmq']}"
        yield model, web.start()
    finally:
        web.stop()
        model.stop()
