"""F4, F5: the web ↔ model link cut for 10 s, silently and with TCP resets, between namespaces."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.drills import netns
from tests.drills.load import HUNG_S, Load
from tests.support.servers import Proc, free_port, model_server, web_server

pytestmark = pytest.mark.integration

CUT_S = 10.0
REQUEST_TIMEOUT_S = 10.0  # the web tier's request_timeout_ms default
EXPECTED = {"coffee.jpg": "espresso", "chelsea.jpg": {"tabby", "tiger cat", "Egyptian cat"}}


@pytest.fixture
def hosts() -> Iterator[netns.Hosts]:
    if (why := netns.available()) is not None:
        pytest.skip(why)
    made = netns.Hosts()
    try:
        yield made
    finally:
        made.close()


def _stack(hosts: netns.Hosts, tmp_path, spawn) -> tuple[Proc, Proc]:
    model = model_server(tmp_path)
    model.env["ZEROLENS_HOST"] = "0.0.0.0"  # inside its own namespace: its links only
    model.ready_url = f"http://{hosts.model_health_ip}:{model.ports['health']}/readyz"
    spawn(hosts.inside(hosts.model, model))
    web = web_server(tmp_path, 0, model_server=f"tcp://{hosts.model_link_ip}:{model.ports['zmq']}")
    port = free_port()
    web.env["ZEROLENS_WEB_BIND"] = f"{hosts.web_ip}:{port}"
    web.ready_url, web.ports["http"] = f"http://{hosts.web_ip}:{port}/healthz", port
    spawn(hosts.inside(hosts.web, web))
    return model, web


@pytest.mark.parametrize(("drill", "reset"), [("F4", False), ("F5", True)], ids=["silent", "tcp-reset"])
def test_a_cut_link_fails_fast_and_heals(hosts, spawn, tmp_path, photos, drill_record, drill, reset):
    _, web = _stack(hosts, tmp_path, spawn)
    loads = [
        Load(web.ports["http"], photos[name].data, clients=2, host=hosts.web_ip)
        for name in ("coffee.jpg", "chelsea.jpg")
    ]
    for load in loads:
        load.start()
    try:
        for load in loads:
            load.wait_for("200", after=time.monotonic(), timeout_s=30)
        hosts.cut(reset)
        cut_at = time.monotonic()  # the cut is in place once its commands have run, not before
        threading.Event().wait(CUT_S)  # the length of the cut, part of the scenario
        heal_from = time.monotonic()  # from here a request may get through again
        hosts.heal(reset)
        healed_at = time.monotonic()
        for load in loads:
            load.wait_for("200", after=healed_at, timeout_s=15)
            load.wait_for("200", after=healed_at + 1, timeout_s=15)
    finally:
        for load in loads:
            load.stop()
    during = [o for load in loads for o in load.between(cut_at, heal_from)]
    wrong = sum(
        o.label not in ((want,) if isinstance(want, str) else want)
        for load, want in zip(loads, EXPECTED.values(), strict=True)
        for o in load.outcomes
        if o.result == "200"
    )
    recovered = min(
        (o.end for load in loads for o in load.between(cut_at) if o.result == "200"), default=None
    )
    statuses = sorted({o.result for o in during})
    drill_record(
        drill,
        f"web ↔ model link cut {'with TCP resets' if reset else 'silently (blackhole)'} for {CUT_S:g} s, c=4",
        requests_during_cut=len(during),
        statuses_during_cut=", ".join(f"{r}×{sum(o.result == r for o in during)}" for r in statuses),
        slowest_during_cut_s=round(max(o.latency_s for o in during), 2),
        hung=sum(o.result == "hung" for load in loads for o in load.outcomes),
        wrong_replies=wrong,
        recovery_after_heal_s=round(recovered - healed_at, 2) if recovered and recovered > healed_at else "-",
    )
    early = [(o.start - cut_at, o.end - cut_at) for o in during if o.result == "200" and o.end < heal_from]
    assert set(statuses) <= {"200", "503", "504"}, statuses
    assert not early, early  # a 200 only for a request retried after the link came back
    assert max(o.latency_s for o in during) <= REQUEST_TIMEOUT_S + 1.0 < HUNG_S
    assert wrong == 0
    assert recovered is not None and recovered - healed_at <= 2.0
