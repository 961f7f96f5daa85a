"""A process-wide budget of decode memory: threads reserve a photo's estimated bytes before decoding it."""

from __future__ import annotations

import collections
import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# How long a decode waits for room before its request is refused as overload. A few big decodes take
# 0.1–0.5 s each, so this outlasts a short burst; longer would hold uploads in memory behind a long one.
DECODE_WAIT_S = 2.0
# glibc keeps what a thread frees in that thread's malloc arena for its next allocation: after big decodes on
# several threads the process would hold their sum, not the budget. So a big decode's memory is given back
# to the system as it ends (~1 ms); small ones keep theirs for reuse.
TRIM_ABOVE_BYTES = 32 << 20


def _malloc_trim() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_trim = _malloc_trim()


class DecodeBusy(Exception):
    """The budget stayed in use for the whole wait: the process is overloaded, not the photo bad (503)."""


class _Budget:
    """`total` bytes shared by threads, granted in arrival order: small decodes cannot starve a big one."""

    def __init__(self, total: int | None) -> None:
        self.total = total  # None: unlimited
        self.held = 0
        self._ready = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()

    def reserve(self, nbytes: int, wait_s: float) -> None:
        """:raise DecodeBusy: no room within `wait_s` seconds."""
        with self._ready:
            if self.total is None or (not self._waiting and self.held + nbytes <= self.total):
                self.held += nbytes
                return
            me, deadline = object(), time.monotonic() + wait_s
            self._waiting.append(me)
            try:
                while self._waiting[0] is not me or self.held + nbytes > self.total:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DecodeBusy(f"no room for another decode within {wait_s:g} s")
                    self._ready.wait(left)
                self.held += nbytes
            finally:
                self._waiting.remove(me)
                self._ready.notify_all()  # the next in line may fit now, or be at the head now

    def release(self, nbytes: int) -> None:
        with self._ready:
            self.held = max(0, self.held - nbytes)
            self._ready.notify_all()


_budget = _Budget(None)


def configure(total_bytes: int | None) -> None:
    """Set this process's budget (None: unlimited); once at start, before any decode."""
    global _budget
    if total_bytes is not None and total_bytes <= 0:
        raise ValueError(f"decode budget must be positive, got {total_bytes}")
    _budget = _Budget(total_bytes)


def total() -> int | None:
    """The budget in bytes, or None when unlimited (not configured: tests, scripts)."""
    return _budget.total


def held() -> int:
    """Bytes reserved by decodes running now."""
    return _budget.held


@contextmanager
def hold(nbytes: int, wait_s: float | None = None) -> Iterator[None]:
    """Reserve `nbytes` of the budget for the block, waiting up to `wait_s` (DECODE_WAIT_S) for room.

    :raise DecodeBusy: no room in time.
    :raise ValueError: more than the whole budget, which could never be granted (refuse the photo first).
    """
    budget = _budget  # released into the budget it came from, should configure() replace it meanwhile
    if budget.total is not None and nbytes > budget.total:
        raise ValueError(f"{nbytes:,} bytes exceed the whole decode budget of {budget.total:,}")
    budget.reserve(max(0, nbytes), DECODE_WAIT_S if wait_s is None else wait_s)
    try:
        yield
    finally:
        budget.release(max(0, nbytes))
        if nbytes >= TRIM_ABOVE_BYTES and _trim is not None:
            _trim()
