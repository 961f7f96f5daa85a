"""Each peer serving system installs (once), starts, classifies the benchmark's photos like zerolens, stops.

Triton's venv is ~480 MB (tritonserver and its libraries ship in the nvidia-pytriton wheel), too big to
install in a test run: its test runs only once its venv exists (`make bench`, or
`.venv/bin/python -c "from bench.peers import venvs; venvs.ensure('triton')"`).
"""

from __future__ import annotations

import http.client
import json
import struct
from urllib.parse import urlsplit

import numpy as np
import pytest

from bench import loadgen
from bench.peers import PEERS, launcher, venvs
from bench.peers.model import Classifier, decode
from bench.photos import photo_set

pytestmark = pytest.mark.integration

# install over ~60 s or ~300 MB: tested only where the venv is already installed
INSTALLED_ONLY = {"triton": "its venv is ~480 MB"}


@pytest.fixture(scope="module")
def reference() -> Classifier:
    """The model and preprocessing as zerolens runs them, in this process."""
    return Classifier()


def top1(url: str, body: loadgen.Body, labels: list[str]) -> str:
    """The label a peer ranks first for one upload (Triton answers probabilities, the others JSON)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", parts.path, body=body[0], headers=loadgen.headers(body))
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data[:500]
        split = resp.getheader(loadgen.OIP_HEADER_LENGTH)
    finally:
        conn.close()
    if split is None:
        return json.loads(data)["predictions"][0]["label"]
    header = json.loads(data[: int(split)])
    assert header["outputs"][0]["name"] == "probabilities"
    raw = data[int(split) :]
    probabilities = np.frombuffer(raw, np.float32, len(raw) // struct.calcsize("f"))
    return labels[int(np.argmax(probabilities))]


@pytest.mark.parametrize("peer", PEERS)
def test_peer_serves_photos_as_zerolens_classifies_them(peer, tmp_path, reference):
    if peer in INSTALLED_ONLY and not venvs.installed(peer):
        pytest.skip(f"{peer}: {INSTALLED_ONLY[peer]}; installed on demand by `make bench`, tested once it is")
    photos = photo_set((None, 2.0))[::4]
    proc, url, encode = launcher.start(peer, tmp_path)
    with proc:
        for photo in photos:  # the same artifact and preprocessing: the same first class
            expected = reference.labels[int(np.argmax(reference.probabilities(decode(photo.data)[None])))]
            assert top1(url, encode(photo.data), reference.labels) == expected, photo.name
        level = loadgen.run_level(url, [encode(p.data) for p in photos], concurrency=3, duration_s=0.5)
        assert level.ok > 0 and not level.summary()["errors"], level.summary()
        assert proc.cpu_s() > 0 and len(proc.rss_mb()) > 1  # the whole process tree is measured
    assert proc.proc is not None and proc.proc.poll() is not None
    assert launcher.post(url, encode(photos[0].data), timeout=2) == 0  # nothing answers once it stopped
