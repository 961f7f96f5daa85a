"""What the threads of one web process share about each model tier: outage, admission limit, input size.

One TierState per process and MODEL_SERVER setting, so what one thread learns (the tier is down, it is full,
its model's input size) every other thread of the worker knows at once. A forked child starts afresh.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from services.config import WebConfig
from services.web.admission import Admission

# While no server is connected a try waits at most CONNECT_WAIT_MS for one (a connect, handshakes included,
# takes a few ms; longer means the tier is down, and a 503 should then come within half a second). Once a
# thread of this process has waited that long in vain, the tier is down for the whole process and every try
# waits only FAST_FAIL_WAIT_MS (reconnects go on in the background): one outage costs one discovery, then
# requests fail fast with 503 instead of holding every gunicorn thread, which would starve /healthz too. The
# first send that goes through ends the outage.
CONNECT_WAIT_MS = 300
FAST_FAIL_WAIT_MS = 50
SPEC_RETRY_S = 1.0  # after a failed input-size ping, threads go without the size this long rather than ping


class TierState:
    """What the threads of one process share about one model tier (one MODEL_SERVER setting)."""

    def __init__(self) -> None:
        self.down_since: float | None = None  # monotonic: when a send first found no server connected
        self.admission = Admission()
        self.input_spec: tuple[int, float] | None = None  # the model's (input size, crop fraction)
        self._spec_failed_at: float | None = None  # monotonic: when the last input-size ping failed
        self._spec_lock = threading.Lock()  # one input-size ping at a time; the other threads wait for it

    def mark_down(self, since: float) -> None:
        """Note an outage from `since` (monotonic), unless one is noted already."""
        if self.down_since is None:
            self.down_since = since

    def connect_wait_s(self) -> float:
        """How long a try may wait for a server to connect: briefly once the tier is known to be down."""
        return (CONNECT_WAIT_MS if self.down_since is None else FAST_FAIL_WAIT_MS) / 1000

    def known_input_spec(self, ask: Callable[[], object]) -> tuple[int, float] | None:
        """The model's (input size, crop fraction), asked once per process by `ask`; None while unknown.

        `ask` is a ping whose answer sets input_spec (it must not raise). Threads that need the size while
        another thread asks wait for that answer instead of asking too; after a failed ask they go without
        it for SPEC_RETRY_S (the upload is then sent as it is).
        """
        if self.input_spec is not None:
            return self.input_spec
        with self._spec_lock:
            failed_at = self._spec_failed_at
            retry = failed_at is None or time.monotonic() - failed_at >= SPEC_RETRY_S
            if self.input_spec is None and retry:
                ask()
                self._spec_failed_at = None if self.input_spec is not None else time.monotonic()
            return self.input_spec


_lock = threading.Lock()
_tiers: dict[str, TierState] = {}  # model_server → what this process's threads know about that tier
_tiers_pid: int | None = None


def tier_state(model_server: str) -> TierState:
    """This process's shared state for the model tier at model_server (fresh in a forked child)."""
    global _tiers_pid
    with _lock:
        if _tiers_pid != os.getpid():
            _tiers.clear()  # a parent's locks and limits mean nothing here
            _tiers_pid = os.getpid()
        return _tiers.setdefault(model_server, TierState())


def admission(cfg: WebConfig) -> Admission:
    """This process's admission limit for the model tier of cfg."""
    return tier_state(cfg.model_server).admission
