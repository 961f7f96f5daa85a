"""Dynamic batcher: gathers submitted items into batches for one `predict_batch` call (stdlib only).

A batch closes when it holds `max_batch_size` items or `max_batch_delay_ms` after its first item arrived,
whichever comes first; items already waiting when the model frees up are taken at once (delay 0 still
batches). With a `pending` hint (how many items are known to be on their way, e.g. being decoded), the
batcher waits only while that is above zero: an idle server answers a lone request at once instead of
holding it for the whole delay, and under load batches still fill while the model is busy.
The queue is bounded: `submit` raises QueueFull instead of letting latency grow without limit.
Items whose deadline passed while queued fail with DeadlineExceeded and never reach the model.
`predict_batch` gets a list and must return a list of the same length and order (checked).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class QueueFull(Exception):
    """The bounded queue is full: answer OVERLOADED."""


class DeadlineExceeded(Exception):
    """The item's deadline passed before its batch ran."""


class BatcherStopped(Exception):
    """The batcher was stopped before the item ran."""


@dataclass(frozen=True)
class BatchResult(Generic[Out]):
    """One item's output plus how it got there."""

    output: Out
    batch_size: int
    queue_s: float  # submit → batch start
    inference_s: float  # the predict_batch call for the whole batch


@dataclass
class _Item:
    value: Any
    deadline: float | None  # the batcher's clock (time.monotonic()) seconds
    future: Future
    enqueued: float


BatchObserver = Callable[[int, float], None]  # (batch size, inference s), once per predict_batch call


class Batcher(Generic[In, Out]):
    """Runs `predict_batch` on one thread over batches of submitted items."""

    def __init__(
        self,
        predict_batch: Callable[[list[In]], Sequence[Out]],
        max_batch_size: int,
        max_batch_delay_ms: float,
        max_queue_size: int,
        observer: BatchObserver | None = None,
        pending: Callable[[], int] | None = None,
        threads: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_batch_delay_ms < 0:
            raise ValueError("max_batch_delay_ms must be 0 or more")
        if max_queue_size < 1:
            raise ValueError("max_queue_size must be at least 1")
        self._predict_batch = predict_batch
        self.max_batch_size = max_batch_size
        self._delay_s = max_batch_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._observer = observer
        self._pending = pending
        # Where the batcher reads the time (arrivals, closing a batch, deadlines, timings); a test passes a
        # clock it moves by hand. Waits still take real time: an open batch reads the clock after each one.
        self._clock = clock
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._running_since: dict[int, float] = {}  # thread id → when its predict_batch call began
        self._threads = [
            threading.Thread(target=self._run, name=f"batcher-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> Batcher[In, Out]:
        for thread in self._threads:
            thread.start()
        return self

    def is_alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def longest_call_s(self) -> float:
        """How long the oldest predict_batch call still running has been running (0 when none runs)."""
        started = list(self._running_since.values())  # a copy: the batcher threads change the dict
        return self._clock() - min(started) if started else 0.0

    def submit(self, value: In, deadline: float | None = None) -> Future[BatchResult[Out]]:
        """Queue one item; the future resolves to a BatchResult or fails.

        :raise QueueFull: when max_queue_size items are already waiting.
        :raise BatcherStopped: after stop().
        """
        future: Future[BatchResult[Out]] = Future()
        with self._cond:
            if self._stopping:
                raise BatcherStopped("batcher is stopped")
            if len(self._queue) >= self.max_queue_size:
                raise QueueFull(f"{len(self._queue)} requests already queued")
            self._queue.append(_Item(value, deadline, future, self._clock()))
            self._cond.notify()
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the threads; items submitted later are refused."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while True:
                while not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                close_at = self._queue[0].enqueued + self._delay_s
                while 0 < len(self._queue) < self.max_batch_size and not self._stopping:
                    if self._pending is not None and self._pending() <= 0:
                        break  # nothing else is on its way: waiting would only add latency
                    remaining = close_at - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                n = min(len(self._queue), self.max_batch_size)
                if n:  # with several threads, another may have taken the items while this one waited
                    return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Item]) -> None:
        start = self._clock()
        live = []
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                continue  # cancelled by its caller
            if item.deadline is not None and start >= item.deadline:
                item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            else:
                live.append(item)
        if not live:
            return
        me = threading.get_ident()
        self._running_since[me] = start  # watched: a call that never returns is a hung runtime
        try:
            outputs = self._predict_batch([item.value for item in live])
            if len(outputs) != len(live):
                raise RuntimeError(f"predict_batch returned {len(outputs)} outputs for {len(live)} inputs")
        except Exception as exc:  # every caller in the batch learns of the failure
            log.exception("batch of %d failed", len(live))
            for item in live:
                item.future.set_exception(exc)
            return
        finally:
            del self._running_since[me]
        inference_s = self._clock() - start
        for item, output in zip(live, outputs, strict=True):
            item.future.set_result(BatchResult(output, len(live), start - item.enqueued, inference_s))
        if self._observer is not None:
            self._observer(len(live), inference_s)
