"""The process-wide decode memory budget: accounting, waiting, overload and release on errors."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
from PIL import Image

from services import decode_budget, imaging
from services.decode_budget import DecodeBusy
from services.imaging import ImageError


@pytest.fixture(autouse=True)
def budget() -> Iterator[None]:
    decode_budget.configure(100)
    yield
    decode_budget.configure(None)


def test_a_hold_reserves_its_bytes_and_gives_them_back() -> None:
    assert decode_budget.total() == 100 and decode_budget.held() == 0
    with decode_budget.hold(30):
        assert decode_budget.held() == 30
        with decode_budget.hold(70):  # exactly the rest fits
            assert decode_budget.held() == 100
        assert decode_budget.held() == 30
    assert decode_budget.held() == 0


def test_a_second_hold_waits_until_the_first_is_released() -> None:
    first_held, release_first, second_held = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with decode_budget.hold(60):
            first_held.set()
            release_first.wait(5)

    def second() -> None:
        with decode_budget.hold(60, wait_s=5):
            second_held.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_held.wait(5)
    threads[1].start()
    assert not second_held.wait(0.05)  # 60 + 60 > 100: it waits
    assert decode_budget.held() == 60
    release_first.set()
    assert second_held.wait(5)
    for thread in threads:
        thread.join(5)
    assert decode_budget.held() == 0


def test_no_room_within_the_wait_is_overload_and_reserves_nothing(monkeypatch) -> None:
    monkeypatch.setattr(decode_budget, "DECODE_WAIT_S", 0.0)  # the default wait, read at each hold
    with decode_budget.hold(80):
        with pytest.raises(DecodeBusy, match="no room for another decode"), decode_budget.hold(30):
            pass
        assert decode_budget.held() == 80
        with decode_budget.hold(20):  # what still fits is granted at once
            assert decode_budget.held() == 100
    assert decode_budget.held() == 0
    assert not issubclass(DecodeBusy, ValueError)  # not an ImageError: the photo is fine


def test_an_error_in_the_block_gives_the_bytes_back() -> None:
    with pytest.raises(OSError), decode_budget.hold(90):
        raise OSError("truncated")
    assert decode_budget.held() == 0
    with decode_budget.hold(100):
        assert decode_budget.held() == 100


def test_the_count_never_goes_negative() -> None:
    with decode_budget.hold(0), decode_budget.hold(-5):  # nothing to reserve
        assert decode_budget.held() == 0
    decode_budget.configure(100)  # replaced while a hold runs: it gives back to the budget it came from
    with decode_budget.hold(10):
        decode_budget.configure(50)
    assert decode_budget.held() == 0


def test_more_than_the_whole_budget_can_never_be_held() -> None:
    with pytest.raises(ValueError, match="exceed the whole decode budget"), decode_budget.hold(101):
        pass
    assert decode_budget.held() == 0


def test_unconfigured_is_unlimited() -> None:
    decode_budget.configure(None)
    assert decode_budget.total() is None
    with decode_budget.hold(10**12), decode_budget.hold(10**12):
        pass
    with pytest.raises(ValueError):
        decode_budget.configure(0)


def _photo() -> Image.Image:
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 40, 40)).save(buf, "PNG")
    return imaging.open_image(buf.getvalue(), 50_000_000)


def test_fit_holds_the_estimate_while_it_decodes(monkeypatch) -> None:
    decode_budget.configure(64 << 20)
    img = _photo()
    need = imaging.decode_bytes(img, 224, 0.875, img.size)
    seen: list[int] = []
    load = type(img).load
    monkeypatch.setattr(type(img), "load", lambda self: seen.append(decode_budget.held()) or load(self))
    assert imaging.fit(img, 224, 0.875).size == (224, 224)
    assert seen and set(seen) == {need} and decode_budget.held() == 0


def test_fit_refuses_a_photo_over_the_whole_budget_and_waits_out_a_full_one(monkeypatch) -> None:
    img = _photo()
    need = imaging.decode_bytes(img, 224, 0.875, img.size)
    decode_budget.configure(need - 1)  # below max_decode_bytes: the whole budget is the limit per photo
    with pytest.raises(ImageError, match=r"over the \d MiB limit per image"):
        imaging.fit(img, 224, 0.875)
    decode_budget.configure(need)
    monkeypatch.setattr(decode_budget, "DECODE_WAIT_S", 0.0)
    with decode_budget.hold(1), pytest.raises(DecodeBusy):
        imaging.fit(_photo(), 224, 0.875)
    assert decode_budget.held() == 0
