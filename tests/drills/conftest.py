"""Drill fixtures: each drill records its figures; `make drills` turns them into docs/reliability.md."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.drills import report


@pytest.fixture
def drill_record(request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    """`drill_record(drill_id, title, **figures)`: keep this test's figures under build/drills/.

    A drill records what it measured (latencies, counts, memory) before asserting on it, so the report
    shows the numbers of a failing run too; the row says whether the test passed.
    """
    recorded: list[report.Row] = []

    def record(drill_id: str, title: str, **figures: float | int | str) -> None:
        recorded.append(report.Row(drill_id, title, request.node.nodeid, dict(figures)))

    yield record
    passed = not getattr(request.node, "rep_call_failed", False)
    for row in recorded:
        report.save(row, passed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    rep = yield
    if rep.when == "call" and rep.failed:
        item.rep_call_failed = True  # type: ignore[attr-defined]
    return rep
