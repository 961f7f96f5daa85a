"""Timing semantics of the dynamic batcher, pinned with extreme values (as Ray Serve's tests do)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from services.model.batcher import Batcher, BatcherStopped, DeadlineExceeded, QueueFull


class Recorder:
    """A fake model: records batch sizes, doubles its inputs, can be held on a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.called = threading.Event()  # set once a batch has reached the model

    def __call__(self, items: list[int]) -> list[int]:
        self.called.set()
        self.gate.wait(10)
        self.batches.append(list(items))
        return [2 * x for x in items]


class FakeClock:
    """The batcher's clock, moved by hand; says when a batcher thread has read it since the test last acted.

    The batcher reads the clock under its lock, as `submit` does, so a batcher read that follows the test's
    latest submit or move saw that item or that time, and has decided whether the open batch closes.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._test_thread = threading.get_ident()
        self._cond = threading.Condition()
        self._ticks = 0  # reads and moves so far
        self._test_tick = 0  # the latest by the test's thread (a submit reads the clock, a move sets it)
        self._batcher_tick = 0  # the latest read by any other thread

    def __call__(self) -> float:
        with self._cond:
            self._ticks += 1
            if threading.get_ident() == self._test_thread:
                self._test_tick = self._ticks
            else:
                self._batcher_tick = self._ticks
            self._cond.notify_all()
            return self.now

    def move_to(self, now: float) -> None:
        with self._cond:
            self._ticks += 1
            self._test_tick, self.now = self._ticks, now

    def batcher_looked(self, timeout_s: float = 5) -> bool:
        """Wait until a batcher thread reads the clock after the test's latest submit or move."""
        with self._cond:
            return self._cond.wait_for(lambda: self._batcher_tick > self._test_tick, timeout_s)


@pytest.fixture
def make_batcher() -> Iterator[Callable[..., Batcher]]:
    """Starts batchers for a test and stops them afterwards, whether the test passed or not."""
    started: list[Batcher] = []

    def start(model, **kw) -> Batcher:
        args = {"max_batch_size": 4, "max_batch_delay_ms": 50, "max_queue_size": 100} | kw
        batcher = Batcher(model, **args).start()
        started.append(batcher)
        return batcher

    yield start
    for batcher in started:
        batcher.stop(timeout=5)


def test_batch_of_one_answers_at_once_despite_a_huge_delay(make_batcher):
    model = Recorder()
    b = make_batcher(model, max_batch_size=1, max_batch_delay_ms=1_000_000)
    assert b.submit(21).result(timeout=5).output == 42


def test_full_batch_closes_before_timeout(make_batcher):
    model = Recorder()
    b = make_batcher(model, max_batch_size=3, max_batch_delay_ms=1_000_000)
    futures = [b.submit(i) for i in range(3)]
    assert [f.result(timeout=5).output for f in futures] == [0, 2, 4]
    assert model.batches == [[0, 1, 2]]
    assert all(f.result().batch_size == 3 for f in futures)


def test_partial_batch_waits_for_a_third_item(make_batcher):
    model = Recorder()
    clock = FakeClock()
    b = make_batcher(model, max_batch_size=3, max_batch_delay_ms=1_000_000, clock=clock)
    first = [b.submit(i) for i in range(2)]
    assert clock.batcher_looked()  # the batcher has seen both items and chosen to wait
    assert not any(f.done() for f in first)  # two items must not finish until a third fills the batch
    third = b.submit(2)
    assert [f.result(timeout=5).batch_size for f in [*first, third]] == [3, 3, 3]
    assert model.batches == [[0, 1, 2]]


def test_batch_closes_after_delay(make_batcher):
    model = Recorder()
    clock = FakeClock()
    b = make_batcher(model, max_batch_size=100, max_batch_delay_ms=30, clock=clock)
    futures = [b.submit(i) for i in range(5)]
    assert clock.batcher_looked()
    clock.move_to(0.029)  # a millisecond before the batch is due
    assert clock.batcher_looked()  # it read the new time after its wait and kept the batch open
    assert not any(f.done() for f in futures)
    clock.move_to(0.030)
    results = [f.result(timeout=5) for f in futures]
    assert model.batches == [[0, 1, 2, 3, 4]]
    assert [r.queue_s for r in results] == [0.030] * 5  # closed exactly max_batch_delay_ms after the first


def test_zero_delay_still_batches_items_already_waiting(make_batcher):
    model = Recorder()
    model.gate.clear()  # hold the model so items pile up behind the first batch
    b = make_batcher(model, max_batch_size=8, max_batch_delay_ms=0)
    first = b.submit(0)
    assert model.called.wait(5)  # the first batch is inside the model: the rest must queue behind it
    rest = [b.submit(i) for i in range(1, 6)]
    model.gate.set()
    assert first.result(timeout=5).batch_size == 1
    assert [f.result(timeout=5).output for f in rest] == [2, 4, 6, 8, 10]
    assert model.batches == [[0], [1, 2, 3, 4, 5]]


def test_replies_go_to_the_right_caller_across_threads(make_batcher):
    model = Recorder()
    b = make_batcher(model, max_batch_size=8, max_batch_delay_ms=5)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = b.submit(i).result(timeout=10).output

    threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 2 * i for i in range(64)}
    assert max(len(batch) for batch in model.batches) > 1


def test_bounded_queue_refuses_at_once(make_batcher):
    model = Recorder()
    model.gate.clear()
    b = make_batcher(model, max_batch_size=1, max_batch_delay_ms=0, max_queue_size=2)
    running = b.submit(0)
    assert model.called.wait(5)  # the first item is inside the model, out of the queue
    b.submit(1)
    b.submit(2)
    with pytest.raises(QueueFull):
        b.submit(3)
    model.gate.set()
    assert running.result(timeout=5).output == 0


def test_expired_items_never_reach_the_model(make_batcher):
    model = Recorder()
    b = make_batcher(model, max_batch_size=4, max_batch_delay_ms=20)
    expired = b.submit(1, deadline=time.monotonic() - 1)
    live = b.submit(2, deadline=time.monotonic() + 10)
    with pytest.raises(DeadlineExceeded):
        expired.result(timeout=5)
    assert live.result(timeout=5).output == 4
    assert model.batches == [[2]]


def test_model_error_fails_every_item_in_the_batch_and_the_batcher_survives(make_batcher):
    calls = []

    def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return items

    b = make_batcher(flaky, max_batch_size=2, max_batch_delay_ms=1_000_000)
    futures = [b.submit(i) for i in range(2)]
    for f in futures:
        with pytest.raises(RuntimeError, match="boom"):
            f.result(timeout=5)
    again = [b.submit(i) for i in (7, 8)]
    assert [f.result(timeout=5).output for f in again] == [7, 8]


def test_wrong_number_of_outputs_is_an_error(make_batcher):
    b = make_batcher(lambda items: items[:-1], max_batch_size=2, max_batch_delay_ms=1_000_000)
    futures = [b.submit(i) for i in range(2)]
    with pytest.raises(RuntimeError, match="returned 1 outputs for 2 inputs"):
        futures[0].result(timeout=5)


def test_stop_runs_what_is_queued_then_refuses(make_batcher):
    model = Recorder()
    b = make_batcher(model, max_batch_size=10, max_batch_delay_ms=1_000_000)
    pending = [b.submit(i) for i in range(3)]
    b.stop(timeout=5)
    assert [f.result(timeout=1).output for f in pending] == [0, 2, 4]
    with pytest.raises(BatcherStopped):
        b.submit(9)
    assert not b.is_alive()


@pytest.mark.parametrize(
    "kw", [{"max_batch_size": 0}, {"max_batch_delay_ms": -1}, {"max_queue_size": 0}], ids=str
)
def test_bad_arguments_fail_in_the_constructor(kw):
    args = {"max_batch_size": 4, "max_batch_delay_ms": 1, "max_queue_size": 10} | kw
    with pytest.raises(ValueError):
        Batcher(lambda items: items, **args)


def test_pending_hint_closes_a_lone_item_at_once_and_waits_for_known_arrivals(make_batcher):
    model = Recorder()
    clock = FakeClock()  # never moved: only the hint or a full batch can close one
    on_the_way = [0]
    b = make_batcher(
        model, max_batch_size=8, max_batch_delay_ms=1_000_000, pending=lambda: on_the_way[0], clock=clock
    )
    assert b.submit(1).result(timeout=5).batch_size == 1  # nothing else coming: no wait despite the delay
    on_the_way[0] = 2
    first = b.submit(2)
    assert clock.batcher_looked()  # it has seen the item and the hint
    assert not first.done()  # two more are known to be coming: the batch stays open
    on_the_way[0] = 1
    b.submit(3)
    assert clock.batcher_looked()
    assert not first.done()  # one more is still coming
    on_the_way[0] = 0
    last = b.submit(4)
    assert first.result(timeout=5).batch_size == 3 and last.result(timeout=5).batch_size == 3


def test_several_threads_run_batches_at_the_same_time(make_batcher):
    running, peak, lock = [0], [0], threading.Lock()
    both_in = threading.Barrier(2, timeout=5)

    def model(items):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        both_in.wait()  # only returns once a second batch runs beside this one
        with lock:
            running[0] -= 1
        return items

    b = make_batcher(model, max_batch_size=1, max_batch_delay_ms=0, threads=2)
    futures = [b.submit(i) for i in range(2)]
    assert [f.result(timeout=5).output for f in futures] == [0, 1]
    assert peak[0] == 2


def test_the_longest_running_call_is_reported_while_it_runs(make_batcher):
    model = Recorder()
    b = make_batcher(model, max_batch_size=1, max_batch_delay_ms=0)
    assert b.longest_call_s() == 0.0
    model.gate.clear()
    future = b.submit(1)
    start = time.monotonic()
    while b.longest_call_s() == 0.0:  # the batcher thread picks it up
        assert time.monotonic() - start < 5
    first = b.longest_call_s()
    while b.longest_call_s() <= first:  # and it grows while the call runs
        assert time.monotonic() - start < 5
    model.gate.set()
    assert future.result(timeout=5).output == 2
    assert b.longest_call_s() == 0.0
