"""Keep a multi-threaded invoke's threads on different CPUs (Linux; elsewhere nothing is pinned).

A multi-threaded LiteRT invoke slows down sharply after the server has sat idle for a moment, with the
process using one core's worth of CPU: the scheduler wakes the pool's worker thread onto the CPU of the
thread that woke it, and the two share one core until load balancing moves one. Pinning the pool's workers
to their own CPUs, and the caller to the others for the length of the call, brings back the speed of
back-to-back invokes. Only worth it where the CPUs are the process's own: with a CPU quota smaller than
the CPUs it may run on (a Kubernetes pod in the shared pool), a pinned thread could wait for a CPU that
other pods are using, so "auto" pins only when the quota covers every allowed CPU.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def _tasks() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def started_threads(create: Callable[[], T]) -> tuple[T, set[int]]:
    """Call `create` and return its result with the OS thread ids that appeared meanwhile."""
    before = _tasks()
    made = create()
    return made, _tasks() - before


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup v2 CPU limit in CPUs (cpu.max), or None when there is none (or no cgroup v2)."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):  # absent, or not what cgroup v2 writes
        return None


def should_pin(mode: str, allowed: set[int], threads: int, quota: float | None) -> bool:
    """Whether to pin `threads` threads given the mode, the CPUs this process may use and its CPU quota."""
    if mode == "off" or threads < 2 or len(allowed) < threads:
        return False
    return mode == "on" or quota is None or math.ceil(quota) >= len(allowed)


class Pinning:
    """The pool's worker threads, each on a CPU of its own; `held()` keeps the caller off those CPUs."""

    def __init__(self, workers: set[int], allowed: set[int]) -> None:
        cpus = sorted(allowed)
        if not 0 < len(workers) < len(cpus):
            raise ValueError(f"{len(workers)} worker threads cannot have CPUs of their own among {cpus}")
        self.worker_cpus = set(cpus[-len(workers) :])
        for tid, cpu in zip(sorted(workers), sorted(self.worker_cpus), strict=True):
            os.sched_setaffinity(tid, {cpu})

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the block with the calling thread kept off the workers' CPUs, then restore its own set."""
        tid = threading.get_native_id()
        own = os.sched_getaffinity(tid)
        try:
            os.sched_setaffinity(tid, own - self.worker_cpus or own)
        except OSError:  # the cpuset changed under us: run where we are
            own = set()
        try:
            yield
        finally:
            if own:
                try:
                    os.sched_setaffinity(tid, own)
                except OSError:
                    log.warning("could not restore the CPU affinity of thread %d", tid)


def pin_pool(mode: str, create: Callable[[], T], threads: int) -> tuple[T, Pinning | None]:
    """Create a `threads`-thread interpreter and, when `mode` allows, pin its pool (threads - 1 workers)."""
    if not hasattr(os, "sched_setaffinity"):
        return create(), None
    allowed = os.sched_getaffinity(0)
    if not should_pin(mode, allowed, threads, cpu_quota()):
        return create(), None
    made, workers = started_threads(create)
    if len(workers) != threads - 1:  # someone else started threads meanwhile: we cannot tell which
        log.warning("not pinning: expected %d new threads, saw %d", threads - 1, len(workers))
        return made, None
    try:
        pinning = Pinning(workers, allowed)
    except (OSError, ValueError) as exc:
        log.warning("not pinning: %s", exc)
        return made, None
    log.info("inference pool threads pinned to CPUs %s", sorted(pinning.worker_cpus))
    return made, pinning
