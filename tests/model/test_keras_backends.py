"""The keras runtime on each backend (jax, torch, tensorflow) against the TFLite runtime, on real photos.

Each backend runs in its own interpreter (tests/model/keras_probe.py): Keras picks its backend once per
process, and only a fresh one shows whether TensorFlow was imported.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from services import config, imaging, protocol
from services.model.runtime import load_runtime
from tests.support.environ import clean_environ
from tests.support.servers import ROOT, ensure_model, model_server

pytestmark = pytest.mark.integration  # loads the real model on each backend, starts a model server

CATS = {"tabby", "tiger cat", "Egyptian cat"}
# The converted TFLite model and Keras on any backend differ by ~1e-6 here (float32 kernels).
ATOL = 1e-4
Probe = tuple[dict[str, Any], dict[str, np.ndarray]]  # the probe's facts, its outputs by name


def _installed(backend: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(importlib.util.find_spec(backend) is None, reason=f"{backend} is not installed")


BACKENDS = [
    pytest.param("jax", marks=_installed("jax")),
    pytest.param("torch", marks=_installed("torch")),
    pytest.param("tensorflow", marks=_installed("tensorflow")),
]


@pytest.fixture(scope="module")
def inputs(photos) -> np.ndarray:
    """chelsea, coffee, china as the runtime gets them: decoded, centre-cropped, 224×224×3 uint8."""
    names = ("chelsea.jpg", "coffee.jpg", "china.jpg")
    return np.stack([np.asarray(imaging.load_rgb(photos[name].data, 224, 0.875)) for name in names])


@pytest.fixture(scope="module")
def tflite(inputs: np.ndarray) -> np.ndarray:
    cfg = config.load(config.ModelConfig, {"model_dir": str(ensure_model())}, environ={})
    return load_runtime(cfg).predict_batch(inputs)


def _probe(backend: str, inputs: np.ndarray, tmp: Path) -> Probe:
    np.save(tmp / "inputs.npy", inputs)
    done = subprocess.run(
        [sys.executable, "-m", "tests.model.keras_probe", str(ensure_model()), str(tmp / "inputs.npy")]
        + [str(tmp / "out.npz")],
        cwd=ROOT,
        env=clean_environ(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(tmp / "out.npz") as out:
        return json.loads(done.stdout.strip().splitlines()[-1]), dict(out)


@pytest.fixture(scope="module")
def probe(inputs: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Probe]:
    """The probe's facts and outputs for a backend, run once per backend for the whole module."""
    done: dict[str, Probe] = {}

    def run(backend: str) -> Probe:
        if backend not in done:
            done[backend] = _probe(backend, inputs, tmp_path_factory.mktemp(backend))
        return done[backend]

    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_classifies_as_tflite_does(backend, tflite, probe) -> None:
    facts, out = probe(backend)
    assert facts["backend"] == backend
    singles = out["singles"]
    assert list(singles.argmax(axis=1)) == list(tflite.argmax(axis=1))  # chelsea, coffee, china
    np.testing.assert_allclose(singles, tflite, atol=ATOL)
    for n in range(1, 7):  # 3 is padded to 4 on jax; 5 and 6 are over max_batch_size
        np.testing.assert_allclose(out[f"n{n}"], singles[np.arange(n) % 3], atol=1e-5)
    assert facts["empty"] == [0, 1000]
    assert facts["normalise_error"] < 1e-4  # every preprocessing mode, on the device vs on the host
    if backend != "tensorflow":  # a GPU host with JAX or PyTorch has no TensorFlow to import
        assert facts["tensorflow"] == []


@_installed("jax")
def test_jax_compiles_each_allowed_size_once_and_never_under_load(probe) -> None:
    facts, _ = probe("jax")
    assert facts["traces"] == 3  # 1, 2 and 4, when the runtime loaded
    assert facts["compiles_until_warm"] > 0  # the listener hears compilations...
    assert facts["compiles_after_warm"] == 0  # ...and none happened after the warm-up, sizes 1 to 6


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@_installed("jax")
def test_model_server_on_jax_answers_a_photo(tmp_path, cat_jpeg) -> None:
    server = model_server(
        tmp_path, runtime="keras", zmq_security="plaintext", max_batch_size=4, allowed_batch_sizes="1,2,4"
    )
    server.env["KERAS_BACKEND"] = "jax"
    with server.start(timeout_s=600) as model, zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{model.ports['zmq']}")
        request = protocol.Request("cat", protocol.deadline_after_ms(30_000), image=cat_jpeg.data)
        sock.send_multipart(protocol.encode_request(request))
        assert sock.poll(30_000), model.log()
        reply = protocol.decode_reply(sock.recv_multipart())
        maps = _mapped_libraries(model.proc.pid)
    assert reply.status is protocol.Status.OK, reply.error
    assert reply.predictions[0].label in CATS
    assert "jaxlib" in maps and "tensorflow" not in maps  # JAX ran it; TensorFlow was never loaded
