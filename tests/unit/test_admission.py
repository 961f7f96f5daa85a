"""The web process's adaptive admission limit to the model tier (services/web/admission.py)."""

from __future__ import annotations

import pytest

from services import protocol
from services.protocol import Reply, Status
from services.web.admission import ADMISSION_GROWTH, Admission


def test_admission_is_unlimited_until_the_tier_is_overloaded() -> None:
    gate = Admission()
    tickets = [gate.try_acquire() for _ in range(100)]
    assert all(tickets) and gate.in_flight == 100


def test_overloaded_reply_cuts_the_limit_once_per_round() -> None:
    gate = Admission()
    tickets = [gate.try_acquire() for _ in range(10)]
    for ticket in tickets:  # ten replies of one round, all OVERLOADED: one cut, to 0.9 × 10 in flight
        ticket.status = Status.OVERLOADED
        gate.release(ticket)
    assert gate.limit == pytest.approx(9.0) and gate.in_flight == 0
    admitted = [gate.try_acquire() for _ in range(10)]
    assert sum(t is not None for t in admitted) == 9  # the tenth is shed before any work
    later = admitted[0]
    later.status = Status.OVERLOADED
    gate.release(later)  # admitted after the cut: a new round, a new cut
    assert gate.limit == pytest.approx(8.1)


def test_served_replies_raise_the_limit_and_one_request_always_passes() -> None:
    gate = Admission()
    for _ in range(60):  # each round's cut: down to the floor of one
        ticket = gate.try_acquire()
        ticket.status = Status.OVERLOADED
        gate.release(ticket)
    assert gate.limit == 1.0
    first = gate.try_acquire()
    assert first is not None and gate.try_acquire() is None
    first.status = Status.OK
    gate.release(first)
    assert gate.limit == 1 + ADMISSION_GROWTH  # +ADMISSION_GROWTH/limit per reply served
    no_reply = gate.try_acquire()
    gate.release(no_reply)  # no reply (a timeout, a refused upload): no signal either way
    assert gate.limit == 1 + ADMISSION_GROWTH


def test_a_ticket_is_given_back_once() -> None:
    gate = Admission()
    ticket = gate.try_acquire()
    ticket.close()
    ticket.close()
    gate.release(ticket)
    assert gate.in_flight == 0 and gate.try_acquire() is not None


def test_limit_grows_only_while_the_server_reports_room() -> None:
    gate = Admission()
    gate.limit = 2.0
    full, spare = gate.try_acquire(), gate.try_acquire()
    sent = Reply("a", Status.OK, queue_depth=8, queue_capacity=8)
    said = protocol.decode_reply(protocol.encode_reply(sent))  # as it arrives
    full.answered(said)  # its queue filled up while the server held it
    gate.release(full)
    assert gate.limit == 2.0
    assert gate.try_acquire() is not None  # the limit is full again
    spare.answered(Reply("b", Status.OK, queue_depth=7, queue_capacity=8))
    gate.release(spare)
    assert gate.limit == 2 + ADMISSION_GROWTH / 2


def test_limit_grows_only_while_the_process_uses_all_of_it() -> None:
    gate = Admission()
    gate.limit = 4.0
    alone = gate.try_acquire()  # one in flight of four allowed: the clients, not the limit, hold it back
    alone.status = Status.OK
    gate.release(alone)
    assert gate.limit == 4.0
    tickets = [gate.try_acquire() for _ in range(4)]
    tickets[0].status = Status.OK
    gate.release(tickets[0])
    assert gate.limit == 4 + ADMISSION_GROWTH / 4
