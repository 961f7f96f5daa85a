"""Where the model servers are: parse MODEL_SERVER, resolve every address of a host, track changes."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from services import protocol

log = logging.getLogger(__name__)

# A resolver maps (host, port) to IP address strings; injected in tests so they need no DNS.
Resolver = Callable[[str, int], list[str]]

_EMPTY_RETRY_S = 1.0  # re-resolve interval while no address is known yet


@dataclass(frozen=True)
class Target:
    """One configured host (a name or an IP literal) and port."""

    host: str
    port: int

    @property
    def is_literal(self) -> bool:
        """True when host is an IP address, which needs no resolution."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def _split_host_port(item: str) -> Target:
    if item.startswith("["):  # [v6]:port
        host, sep, port = item[1:].partition("]:")
    else:
        host, sep, port = item.rpartition(":")
        if ":" in host:
            raise ValueError(f"{item!r}: write an IPv6 address in brackets, as [addr]:port")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{item!r}: expected host:port with a port from 1 to 65535")
    return Target(host, int(port))


def parse(spec: str) -> list[Target]:
    """Parse "host:port" or a comma-separated list of "tcp://host:port" endpoints into targets.

    :raise ValueError: on an empty spec, a missing port or a transport other than tcp.
    """
    targets: list[Target] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if sep:
            if scheme != "tcp":
                raise ValueError(f"{item!r}: only tcp:// endpoints are supported")
            item = rest
        targets.append(_split_host_port(item))
    if not targets:
        raise ValueError(f"no model server endpoint in {spec!r}")
    return targets


def resolve_host(host: str, port: int) -> list[str]:
    """Every IPv4 and IPv6 address of host, in resolver order, without duplicates.

    :raise OSError: (socket.gaierror) when the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(targets: Iterable[Target], resolver: Resolver = resolve_host) -> frozenset[str]:
    """The endpoints of all targets: IP literals as given, names expanded to every address.

    :raise OSError: when any name fails to resolve (the caller keeps its last known set).
    """
    endpoints: set[str] = set()
    for target in targets:
        addresses = [target.host] if target.is_literal else resolver(target.host, target.port)
        endpoints.update(protocol.tcp_endpoint(address, target.port) for address in addresses)
    return frozenset(endpoints)


def diff(current: Iterable[str], wanted: Iterable[str]) -> tuple[list[str], list[str]]:
    """(to_connect, to_disconnect) that turn the endpoint set `current` into `wanted`, each sorted."""
    current_set, wanted_set = set(current), set(wanted)
    return sorted(wanted_set - current_set), sorted(current_set - wanted_set)


class Endpoints:
    """The endpoints of a MODEL_SERVER spec, re-resolved at most every `interval_s` (no background thread)."""

    def __init__(
        self,
        spec: str,
        interval_s: float,
        resolver: Resolver = resolve_host,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.targets = parse(spec)
        self.interval_s = interval_s
        self._resolver = resolver
        self._clock = clock
        self._current: frozenset[str] = frozenset()
        self._resolved_at: float | None = None
        # Only names change over time: a list of IP literals is resolved once.
        self._dynamic = not all(t.is_literal for t in self.targets)

    @property
    def current(self) -> frozenset[str]:
        """The last known endpoints (empty until the first successful resolution)."""
        return self._current

    def due(self) -> bool:
        """True when the endpoints have never been resolved or the interval has passed."""
        if self._resolved_at is None:
            return True
        # With nothing known yet (servers not up, DNS not ready), retry sooner than the normal interval.
        interval_s = min(self.interval_s, _EMPTY_RETRY_S) if not self._current else self.interval_s
        return self._dynamic and self._clock() - self._resolved_at >= interval_s

    def refresh(self) -> frozenset[str]:
        """Resolve now; on failure or an empty answer keep the last known endpoints and log a warning."""
        self._resolved_at = self._clock()
        try:
            found = resolve(self.targets, self._resolver)
        except OSError as exc:
            log.warning(
                "cannot resolve model servers %s: %s; keeping %s", self.spec, exc, sorted(self._current)
            )
            return self._current
        if not found:
            log.warning("model servers %s resolved to nothing; keeping %s", self.spec, sorted(self._current))
            return self._current
        if found != self._current:
            log.info("model servers %s: %s", self.spec, ", ".join(sorted(found)))
        self._current = found
        return found

    def get(self) -> frozenset[str]:
        """The current endpoints, re-resolving first when due."""
        return self.refresh() if self.due() else self._current
