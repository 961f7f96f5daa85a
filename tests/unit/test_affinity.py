"""CPU pinning of a multi-threaded invoke's pool: when to pin, and that the pinned threads stay put."""

from __future__ import annotations

import os
import threading

import pytest

from services.model import affinity

needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs (Linux)"
)


@pytest.mark.parametrize(
    ("mode", "allowed", "threads", "quota", "expected"),
    [
        ("auto", {0, 1}, 2, None, True),  # a VM or a container without a quota: the CPUs are ours
        ("auto", {0, 1}, 2, 2.0, True),  # quota covers both CPUs (e.g. Kubernetes' static CPU manager)
        ("auto", {2, 3}, 2, 1.5, True),
        ("auto", set(range(64)), 2, 2.0, False),  # a shared pool: another pod may hold the pinned CPU
        ("on", set(range(64)), 2, 2.0, True),
        ("off", {0, 1}, 2, None, False),
        ("on", {0}, 2, None, False),  # fewer CPUs than threads: nothing to spread over
        ("on", {0, 1}, 1, None, False),  # a single-threaded invoke has no pool
    ],
)
def test_should_pin(mode: str, allowed: set[int], threads: int, quota: float | None, expected: bool) -> None:
    assert affinity.should_pin(mode, allowed, threads, quota) is expected


def test_cpu_quota_reads_cgroup_v2(tmp_path) -> None:
    assert affinity.cpu_quota(tmp_path) is None  # no cgroup v2 file
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert affinity.cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert affinity.cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("lots 100000\n")  # not what cgroup v2 writes: no quota known
    assert affinity.cpu_quota(tmp_path) is None


class _Parked:
    """A thread that waits until told to end, and reports its OS thread id."""

    def __init__(self) -> None:
        self.release, self.tid = threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        self.tid = threading.get_native_id()
        self._started.set()
        self.release.wait()

    def start(self) -> _Parked:
        self.thread.start()
        self._started.wait()
        return self


def test_started_threads_names_the_new_ones() -> None:
    parked, new = affinity.started_threads(lambda: _Parked().start())
    try:
        assert new == {parked.tid}
    finally:
        parked.release.set()


@needs_two_cpus
def test_pinning_spreads_the_pool_and_keeps_the_caller_off_it() -> None:
    allowed = os.sched_getaffinity(0)
    parked = _Parked().start()
    try:
        pinning = affinity.Pinning({parked.tid}, allowed)
        assert os.sched_getaffinity(parked.tid) == pinning.worker_cpus
        assert len(pinning.worker_cpus) == 1 and pinning.worker_cpus < allowed
        me = threading.get_native_id()
        with pytest.raises(RuntimeError), pinning.held():
            assert os.sched_getaffinity(me) == allowed - pinning.worker_cpus
            raise RuntimeError("the block fails")
        assert os.sched_getaffinity(me) == allowed  # restored, even after a failure
        os.sched_setaffinity(me, pinning.worker_cpus)  # a caller confined to the workers' CPU stays there
        try:
            with pinning.held():
                assert os.sched_getaffinity(me) == pinning.worker_cpus
            assert os.sched_getaffinity(me) == pinning.worker_cpus  # its own set comes back, not all CPUs
        finally:
            os.sched_setaffinity(me, allowed)
    finally:
        parked.release.set()


@needs_two_cpus
def test_pin_pool_pins_only_what_it_created() -> None:
    made, pinning = affinity.pin_pool("on", lambda: _Parked().start(), threads=2)
    try:
        assert pinning is not None and os.sched_getaffinity(made.tid) == pinning.worker_cpus
    finally:
        made.release.set()
    two = lambda: [_Parked().start(), _Parked().start()]  # noqa: E731 - more threads than a 2-thread pool has
    made, pinning = affinity.pin_pool("on", two, threads=2)
    for parked in made:
        parked.release.set()
    assert pinning is None
    made, pinning = affinity.pin_pool("off", lambda: _Parked().start(), threads=2)
    made.release.set()
    assert pinning is None


def test_pinning_needs_a_cpu_left_for_the_caller() -> None:
    with pytest.raises(ValueError):
        affinity.Pinning(set(), {0, 1})
    with pytest.raises(ValueError):
        affinity.Pinning({101, 102}, {0, 1})
