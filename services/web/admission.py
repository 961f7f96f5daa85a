"""How many requests one web process lets into the model tier at once: an adaptive limit (AIMD).

Stdlib only. The model client keeps one Admission per process and model tier (tiers.tier_state);
the views take a Ticket before any work and give it back with the model's answer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from services.protocol import Reply, Status

# Admission: an OVERLOADED reply cuts the process's limit to this fraction of what was in flight (Netflix
# concurrency-limits' AIMD uses 0.9; 0.5 halves as TCP does but leaves the queue idle after each cut).
ADMISSION_BACKOFF = 0.9
# An OK reply raises the limit by this over the limit: a quarter of a request per round of replies. Each
# probe past the queue's capacity ends in an OVERLOADED reply, a decode thrown away; growing a whole request
# a round, as TCP does, probed four times as often.
ADMISSION_GROWTH = 0.25
ADMISSION_MAX = 4096  # "no limit": the limit only matters once an OVERLOADED reply has set it


@dataclass(eq=False)
class Ticket:
    """One admitted request: the limit's epoch when it was admitted, and the model's answer once known."""

    epoch: int
    gate: Admission
    status: Status | None = None  # the reply's status; None when no reply came (or none was asked for)
    room: bool | None = None  # whether the server had a free slot all along; None: it did not say
    closed: bool = False

    def close(self) -> None:
        """Give the ticket back (once; later calls do nothing)."""
        self.gate.release(self)

    def answered(self, reply: Reply) -> None:
        """Note the model's reply to this request (or to one of its photos: an OVERLOADED one stays noted)."""
        if self.status is Status.OVERLOADED:
            return
        self.status = reply.status
        self.room = reply.queue_depth < reply.queue_capacity if reply.queue_capacity else None


class Admission:
    """How many requests this process lets into the model tier at once: an adaptive limit (AIMD).

    The model servers refuse work over their bounded queue with OVERLOADED; by then the web tier has read and
    decoded the photo for nothing. So each process learns how much the tier takes from its replies, as TCP
    learns a path's capacity: an OVERLOADED reply cuts the limit to ADMISSION_BACKOFF × the requests then in
    flight, once per round (requests admitted before a cut do not cut again); an OK reply raises it by
    ADMISSION_GROWTH/limit when the server says its queue never filled while it held the request (or does
    not say), and this process had all of its limit in flight. Growing slowly, only into room the server
    reported and only a limit in use, keeps the probes that end in OVERLOADED, each a decode thrown away,
    rare. Over the limit a request is refused before any work (the worker's loop asks before the request
    waits for a thread: views.py installs it). The queues are shared
    with every other web process; each process settles at its share without knowing how many there are, and
    nothing is cached about the servers that could go stale: the limit moves only on replies.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.limit = float(ADMISSION_MAX)
        self.in_flight = 0
        self._epoch = 0

    def full(self) -> bool:
        """Whether a request now would be refused (read without the lock: a hint for refusing early)."""
        return self.in_flight >= max(1, int(self.limit))  # at least one: the way to learn the queue drained

    def try_acquire(self) -> Ticket | None:
        """A ticket for one request, or None when the limit is reached (shed it)."""
        with self._lock:
            if self.full():
                return None
            self.in_flight += 1
            return Ticket(self._epoch, self)

    def release(self, ticket: Ticket) -> None:
        """Give the ticket back, adapting the limit to the model's answer (ticket.status); once per ticket."""
        with self._lock:
            if ticket.closed:
                return
            ticket.closed = True
            self.in_flight -= 1
            if ticket.status is Status.OVERLOADED:
                if ticket.epoch == self._epoch:
                    self.limit = max(1.0, min(self.limit, self.in_flight + 1) * ADMISSION_BACKOFF)
                    self._epoch += 1
            elif ticket.status is Status.OK and ticket.room is not False and self._limit_in_use():
                self.limit = min(float(ADMISSION_MAX), self.limit + ADMISSION_GROWTH / self.limit)

    def _limit_in_use(self) -> bool:
        """Whether all of the limit was in flight as a ticket came back (its own included).

        The limit grows only then: a limit raised while the clients sent less would let a later burst
        overflow the queues (TCP grows only a window it fills, RFC 7661).
        """
        return self.in_flight + 1 >= int(self.limit)
