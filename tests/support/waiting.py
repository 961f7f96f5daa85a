"""Reaching a state by polling it, never by a fixed sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` every 5 ms; fail the test if it is not true within timeout_s."""
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        threading.Event().wait(0.005)
