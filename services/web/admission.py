"""How many requests one web process lets into the model tier at once: an adaptive limit (AIMD).

Stdlib only. The model client keeps one Admission per process and model tier (model_client.tier_state);
the views take a Ticket before any work and give it back with the model's answer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from services.protocol import Reply, Status

# Admission: an OVERLOADED reply cuts the process's limit to this fraction of what was in flight (Netflix
# concurrency-limits' AIMD uses 0.9; 0.5 halves as TCP does but leaves the queue idle after each cut).
ADMISSION_BACKOFF = 0.9
ADMISSION_MAX = 4096  # "no limit": the limit only matters once an OVERLOADED reply has set it


@dataclass
class Ticket:
    """One admitted request: the limit's epoch when it was admitted, and the model's answer once known."""

    epoch: int
    status: Status | None = None  # the reply's status; None when no reply came (or none was asked for)
    room: bool | None = None  # whether the server had a free slot as it answered; None: it did not say

    def answered(self, reply: Reply) -> None:
        """Note the model's reply to this request."""
        self.status = reply.status
        self.room = reply.queue_depth < reply.queue_capacity if reply.queue_capacity else None


class Admission:
    """How many requests this process lets into the model tier at once: an adaptive limit (AIMD).

    The model servers refuse work over their bounded queue with OVERLOADED; by then the web tier has read and
    decoded the photo for nothing. So each process learns how much the tier takes from its replies, as TCP
    learns a path's capacity: an OVERLOADED reply cuts the limit to ADMISSION_BACKOFF × the requests then in
    flight, once per round (requests admitted before a cut do not cut again); an OK reply raises it by
    1/limit (about one per round of replies) when the server says it had a free slot as it answered (or does
    not say). Growing only into room the server reported keeps the probes that end in OVERLOADED, each a
    decode thrown away, rare. Over the limit a request is refused before any work. The queues are shared
    with every other web process; each process settles at its share without knowing how many there are, and
    nothing is cached about the servers that could go stale: the limit moves only on replies.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.limit = float(ADMISSION_MAX)
        self.in_flight = 0
        self._epoch = 0

    def try_acquire(self) -> Ticket | None:
        """A ticket for one request, or None when the limit is reached (shed it)."""
        with self._lock:
            if self.in_flight >= max(1, int(self.limit)):  # at least one: the way to learn the queue drained
                return None
            self.in_flight += 1
            return Ticket(self._epoch)

    def release(self, ticket: Ticket) -> None:
        """Give the ticket back, adapting the limit to the model's answer (ticket.status)."""
        with self._lock:
            self.in_flight -= 1
            if ticket.status is Status.OVERLOADED:
                if ticket.epoch == self._epoch:
                    self.limit = max(1.0, min(self.limit, self.in_flight + 1) * ADMISSION_BACKOFF)
                    self._epoch += 1
            elif ticket.status is Status.OK and ticket.room is not False:
                self.limit = min(float(ADMISSION_MAX), self.limit + 1 / self.limit)
