"""What the threads of one web process share about a model tier: its outage, admission limit, input size."""

from __future__ import annotations

import threading
import time

import pytest

from services.config import WebConfig, load
from services.web import tiers
from services.web.tiers import TierState

SPEC = (224, 0.875)


@pytest.fixture(autouse=True)
def fresh_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty per-process registry, so what one test teaches a tier no other test sees."""
    monkeypatch.setattr(tiers, "_tiers", {})


class Ping:
    """An input-size ping that teaches the tier `answer` (None: no answer) after hold_s; counts its calls."""

    def __init__(self, tier: TierState, answer: tuple[int, float] | None, hold_s: float = 0.0) -> None:
        self.tier, self.answer, self.hold_s, self.calls = tier, answer, hold_s, 0

    def __call__(self) -> None:
        self.calls += 1
        time.sleep(self.hold_s)
        if self.answer is not None:
            self.tier.input_spec = self.answer


def test_threads_that_need_the_input_size_share_one_ping() -> None:
    tier = tiers.tier_state("model:5576")
    ask = Ping(tier, SPEC, hold_s=0.1)  # out long enough for every thread to need the size meanwhile
    gate = threading.Barrier(6)
    specs: list[tuple[int, float] | None] = []

    def need() -> None:
        gate.wait()
        specs.append(tier.known_input_spec(ask))

    threads = [threading.Thread(target=need) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert specs == [SPEC] * 6 and ask.calls == 1


def test_a_failed_ping_is_not_repeated_until_spec_retry_s_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    tier = tiers.tier_state("model:5576")
    silent = Ping(tier, None)
    assert [tier.known_input_spec(silent) for _ in range(4)] == [None] * 4
    assert silent.calls == 1  # the upload goes as it is meanwhile
    monkeypatch.setattr(tiers, "SPEC_RETRY_S", 0.0)  # as if SPEC_RETRY_S had passed
    assert tier.known_input_spec(Ping(tier, SPEC)) == SPEC
    assert tier.known_input_spec(silent) == SPEC and silent.calls == 1


def test_a_try_waits_briefly_for_a_connection_once_the_tier_is_known_down() -> None:
    tier = tiers.tier_state("model:5576")
    assert tier.connect_wait_s() == tiers.CONNECT_WAIT_MS / 1000
    tier.down_since = time.monotonic()  # a thread of this process waited in vain
    assert tier.connect_wait_s() == tiers.FAST_FAIL_WAIT_MS / 1000


def test_one_state_per_model_tier_and_process() -> None:
    cfg = load(WebConfig, overrides={"model_server": "model:5576"}, environ={})
    assert tiers.tier_state("model:5576") is tiers.tier_state("model:5576")
    assert tiers.tier_state("other:5576") is not tiers.tier_state("model:5576")
    assert tiers.admission(cfg) is tiers.tier_state("model:5576").admission
