"""Integration fixtures: a real model server and a real gunicorn web tier, shared per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.servers import Proc, model_server, web_server


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[Proc, Proc]]:
    """A real model server (TFLite) and a real gunicorn web tier, shared by a test module."""
    tmp = tmp_path_factory.mktemp("stack")
    model = model_server(tmp, max_batch_delay_ms=10).start()
    web = web_server(tmp, model.ports["zmq"]).start()
    yield model, web
    web.stop()
    model.stop()
