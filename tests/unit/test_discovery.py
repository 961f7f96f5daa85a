"""Model-server discovery: parsing MODEL_SERVER, IPv6 endpoints, endpoint diffs, resolution failures."""

from __future__ import annotations

import logging
import socket

import pytest

from services import protocol
from services.web import discovery
from services.web.discovery import Endpoints, Target


class FakeResolver:
    """Answers from a mutable table; raises like getaddrinfo for unknown names."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("model:5576", [Target("model", 5576)]),
        ("10.0.0.7:5576", [Target("10.0.0.7", 5576)]),
        ("[::1]:5576", [Target("::1", 5576)]),
        ("tcp://a:1, tcp://b:2", [Target("a", 1), Target("b", 2)]),
        ("tcp://[fd00::5]:7000,", [Target("fd00::5", 7000)]),
        (
            "model-0.model:5576,model-1.model:5576",
            [Target("model-0.model", 5576), Target("model-1.model", 5576)],
        ),
    ],
)
def test_parse_accepts_host_port_and_endpoint_lists(spec: str, expected: list[Target]) -> None:
    assert discovery.parse(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", " , ", "model", "model:", ":5576", "model:http", "model:0", "model:70000", "::1:5576", "ipc://x:1"],
)
def test_parse_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        discovery.parse(spec)


def test_ipv6_endpoints_are_bracketed() -> None:
    assert protocol.tcp_endpoint("fd00::5", 5576) == "tcp://[fd00::5]:5576"
    assert protocol.tcp_endpoint("10.1.2.3", 5576) == "tcp://10.1.2.3:5576"


def test_a_name_resolves_to_every_address_v4_and_v6() -> None:
    resolver = FakeResolver({"model": ["10.0.0.1", "10.0.0.2", "fd00::3"]})
    found = discovery.resolve(discovery.parse("model:5576"), resolver)
    assert found == {"tcp://10.0.0.1:5576", "tcp://10.0.0.2:5576", "tcp://[fd00::3]:5576"}


def test_ip_literals_are_not_resolved() -> None:
    resolver = FakeResolver({})
    found = discovery.resolve(discovery.parse("tcp://127.0.0.1:1,tcp://[::1]:2"), resolver)
    assert found == {"tcp://127.0.0.1:1", "tcp://[::1]:2"}
    assert resolver.calls == []


def test_real_resolver_handles_a_numeric_host_without_dns() -> None:
    assert discovery.resolve_host("127.0.0.1", 5) == ["127.0.0.1"]


def test_diff_connects_new_and_disconnects_vanished_endpoints() -> None:
    to_connect, to_disconnect = discovery.diff(
        {"tcp://a:1", "tcp://b:1"}, {"tcp://b:1", "tcp://d:1", "tcp://c:1"}
    )
    assert to_connect == ["tcp://c:1", "tcp://d:1"]
    assert to_disconnect == ["tcp://a:1"]
    assert discovery.diff({"tcp://a:1"}, {"tcp://a:1"}) == ([], [])


def test_endpoints_follow_the_name_after_the_interval() -> None:
    resolver, clock = FakeResolver({"model": ["10.0.0.1"]}), FakeClock()
    endpoints = Endpoints("model:5576", interval_s=5.0, resolver=resolver, clock=clock)
    assert endpoints.get() == {"tcp://10.0.0.1:5576"}
    resolver.table["model"] = ["10.0.0.1", "10.0.0.2"]
    clock.now += 4.9
    assert endpoints.get() == {"tcp://10.0.0.1:5576"}  # not due yet: no lookup
    assert len(resolver.calls) == 1
    clock.now += 0.2
    assert endpoints.get() == {"tcp://10.0.0.1:5576", "tcp://10.0.0.2:5576"}


def test_resolution_failure_keeps_the_last_known_endpoints(caplog: pytest.LogCaptureFixture) -> None:
    resolver, clock = FakeResolver({"model": ["10.0.0.1"]}), FakeClock()
    endpoints = Endpoints("model:5576", interval_s=1.0, resolver=resolver, clock=clock)
    assert endpoints.get() == {"tcp://10.0.0.1:5576"}
    del resolver.table["model"]
    clock.now += 2
    with caplog.at_level(logging.WARNING, logger="services.web.discovery"):
        assert endpoints.get() == {"tcp://10.0.0.1:5576"}
    assert "cannot resolve model servers model:5576" in caplog.text
    resolver.table["model"] = []  # an empty answer (e.g. every pod gone for a moment) is not believed either
    clock.now += 2
    assert endpoints.get() == {"tcp://10.0.0.1:5576"}


def test_unresolved_name_is_retried_sooner_than_the_interval() -> None:
    resolver, clock = FakeResolver({}), FakeClock()
    endpoints = Endpoints("model:5576", interval_s=30.0, resolver=resolver, clock=clock)
    assert endpoints.get() == frozenset()
    resolver.table["model"] = ["10.0.0.9"]
    clock.now += 1.0
    assert endpoints.get() == {"tcp://10.0.0.9:5576"}


def test_literal_endpoints_are_resolved_once() -> None:
    clock = FakeClock()
    endpoints = Endpoints("tcp://127.0.0.1:7", interval_s=1.0, resolver=FakeResolver({}), clock=clock)
    assert endpoints.get() == {"tcp://127.0.0.1:7"}
    clock.now += 100
    assert not endpoints.due()
