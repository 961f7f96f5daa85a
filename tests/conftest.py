"""Shared test fixtures: real photos and bad uploads, free ports, the app with a fake model, real servers."""

from __future__ import annotations

import contextlib
import importlib.resources
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from services.protocol import Prediction, Reply, Status
from tests.support.environ import clean_environ
from tests.support.servers import Proc, free_port, model_server, web_server

FAKE_LABELS = ["tiger cat", "Egyptian cat", "tabby", "lynx", "tiger", "cougar", "snow leopard"]


@dataclass(frozen=True)
class Upload:
    """An upload as a browser would send it: bytes plus the (untrusted) file name and content type."""

    data: bytes
    filename: str
    content_type: str

    def as_file(self) -> tuple[io.BytesIO, str, str]:
        """The (file, filename, content_type) tuple the Flask test client posts as a multipart file."""
        return io.BytesIO(self.data), self.filename, self.content_type


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid-looking PNG header claiming width×height RGB pixels; ~60 bytes, nothing is allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\x00" * 16)  # far too little data: only a decoder would notice
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def photos() -> dict[str, Upload]:
    """Real photos: scikit-image's chelsea (a cat) and coffee, scikit-learn's china.jpg (a palace)."""
    from skimage import data

    chelsea = Image.fromarray(data.chelsea())
    coffee = Image.fromarray(data.coffee())
    china = (importlib.resources.files("sklearn.datasets") / "images" / "china.jpg").read_bytes()
    return {
        "chelsea.jpg": Upload(_encode(chelsea, "JPEG", quality=92), "chelsea.jpg", "image/jpeg"),
        "chelsea.png": Upload(_encode(chelsea, "PNG"), "chelsea.png", "image/png"),
        "coffee.jpg": Upload(_encode(coffee, "JPEG", quality=92), "coffee.jpg", "image/jpeg"),
        "china.jpg": Upload(china, "china.jpg", "image/jpeg"),
    }


@pytest.fixture(scope="session")
def cat_jpeg(photos: dict[str, Upload]) -> Upload:
    """The chelsea photo as a JPEG upload."""
    return photos["chelsea.jpg"]


@pytest.fixture(scope="session")
def bad_uploads(photos: dict[str, Upload]) -> dict[str, Upload]:
    """Uploads a careful server must refuse or handle: broken, mislabelled, exotic and hostile files."""
    cat = Image.open(io.BytesIO(photos["chelsea.jpg"].data))
    cat.load()
    small = cat.resize((64, 43))
    jpeg = photos["chelsea.jpg"].data
    rgba = small.convert("RGBA")
    rgba.putalpha(128)
    grey16 = Image.new("I;16", (64, 43))
    grey16.putdata([(x * 1000) % 65536 for x in range(64 * 43)])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return {
        "empty": Upload(b"", "empty.jpg", "image/jpeg"),
        "text": Upload(b"this is not a photo, just text named .jpg\n" * 20, "notes.jpg", "image/jpeg"),
        "truncated_jpeg": Upload(jpeg[: len(jpeg) // 2], "truncated.jpg", "image/jpeg"),
        "gif": Upload(_encode(small.convert("P"), "GIF"), "anim.gif", "image/gif"),
        "ico": Upload(_encode(small, "ICO"), "icon.ico", "image/x-icon"),  # not an accepted type
        "png_alpha": Upload(_encode(rgba, "PNG"), "alpha.png", "image/png"),
        "cmyk_jpeg": Upload(_encode(small.convert("CMYK"), "JPEG"), "cmyk.jpg", "image/jpeg"),
        "png_16bit": Upload(_encode(grey16, "PNG"), "grey16.png", "image/png"),
        "bomb_png": Upload(bomb_png(), "bomb.png", "image/png"),
        "exif_rotated_jpeg": Upload(_encode(small, "JPEG", exif=exif), "rotated.jpg", "image/jpeg"),
    }


@pytest.fixture
def unused_tcp_port() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_port()


@pytest.fixture
def unused_tcp_port_factory() -> Callable[[], int]:
    """A callable returning a different free TCP port on 127.0.0.1 each time."""
    given: set[int] = set()

    def factory() -> int:
        port = free_port()
        while port in given:
            port = free_port()
        given.add(port)
        return port

    return factory


class FakeModelClient:
    """Stands in for the ZeroMQ model client: answers `status` or raises `raises`, and records every call."""

    def __init__(self) -> None:
        self.status = Status.OK
        self.error: str | None = None
        self.raises: Exception | None = None
        self.calls: list[dict[str, Any]] = []
        self.pings = 0
        self.input: tuple[int, float] | None = None  # what input_spec() answers: (size, crop fraction)
        self.refuse_pixels = (
            False  # answer BAD_REQUEST to decoded pixels, as a server with another model would
        )

    def forget_input_spec(self) -> None:
        """Send uploads as they are from now on, as the model client does when told."""
        self.input = None

    def _reply(self, request_id: str, top_k: int) -> Reply:
        if self.raises is not None:
            raise self.raises
        if self.status is not Status.OK:
            return Reply(request_id, self.status, self.error)
        predictions = [
            Prediction(FAKE_LABELS[i % len(FAKE_LABELS)], 281 + i, 0.6 / (i + 1)) for i in range(top_k)
        ]
        timings = {"queue": 1.5, "preprocess": 4.0, "inference": 7.25, "total": 13.0}
        return Reply(request_id, Status.OK, None, predictions, timings, batch_size=3, model="fake_net")

    def classify(
        self,
        image: bytes,
        top_k: int,
        request_id: str | None = None,
        shape: tuple | None = None,
        timeout_ms: int | None = None,
    ) -> Reply:
        """Record the call and answer as scripted."""
        call = {"image": bytes(image), "top_k": top_k, "request_id": request_id, "shape": shape}
        self.calls.append({**call, "timeout_ms": timeout_ms})
        if shape is not None and self.refuse_pixels:
            return Reply(
                request_id or "refused", Status.BAD_REQUEST, f"rgb8 pixels must be 224×224×3, got {shape}"
            )
        return self._reply(request_id or f"fake{len(self.calls):04d}", top_k)

    def ping(self, timeout_ms: int | None = None) -> Reply:
        """Count the ping and answer as scripted."""
        self.pings += 1
        return self._reply("ping", 1)

    def input_spec(self) -> tuple[int, float] | None:
        """The scripted model input (None: the web tier sends the upload as it is)."""
        return self.input

    def close(self) -> None:
        """Nothing to close."""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ZEROLENS_* (or PROMETHEUS_*) setting of the developer's shell leaks into a test."""
    for key in os.environ.keys() - clean_environ().keys():
        monkeypatch.delenv(key)


@pytest.fixture
def fake_model() -> FakeModelClient:
    """The fake model client the `app` fixtures inject."""
    return FakeModelClient()


@pytest.fixture
def make_app(clean_env: None, fake_model: FakeModelClient) -> Callable[..., Any]:
    """create_app in testing mode with fake_model injected; keyword arguments are extra settings."""
    from services.web import create_app

    def make(**settings: Any) -> Any:
        return create_app({"TESTING": True, "MODEL_CLIENT": lambda cfg: fake_model, **settings})

    return make


@pytest.fixture
def tiers(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fresh per-process model tier state (admission limits, outage), so tests do not share it."""
    fresh: dict = {}
    monkeypatch.setattr("services.web.tiers._tiers", fresh)
    return fresh


@pytest.fixture
def app(make_app: Callable[..., Any]) -> Any:
    """The web app with the fake model client."""
    return make_app()


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    """A Flask test client for `app`."""
    with app.test_client() as client:
        yield client


@pytest.fixture
def spawn() -> Iterator[Callable[[Proc], Proc]]:
    """Start a server process for one test; whatever happens, it is stopped when the test ends."""
    with contextlib.ExitStack() as started:  # stops them in reverse order

        def start(proc: Proc, timeout_s: float = 120) -> Proc:
            return started.enter_context(proc.start(timeout_s))

        yield start


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, dict[str, object]]:
    """Extra settings of the `stack` servers by tier; a test module overrides this fixture to change them."""
    return {"model": {"max_batch_delay_ms": 10}, "web": {}}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, stack_settings: dict[str, dict[str, object]]
) -> Iterator[tuple[Proc, Proc]]:
    """A real model server (TFLite) and a real gunicorn web tier, shared by a test module."""
    tmp = tmp_path_factory.mktemp("stack")
    with (
        model_server(tmp, **stack_settings["model"]).start() as model,
        web_server(tmp, model.ports["zmq"], **stack_settings["web"]).start() as web,
    ):
        yield model, web
