"""Closing a listener: what waits in its accept queue is taken first, and a later connection is refused."""

from __future__ import annotations

import socket

import pytest

from services.web.listener import close_when_empty


def _listener() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    listener.setblocking(False)
    return listener


def _take_all(listener: socket.socket, taken: list[socket.socket]) -> bool:
    while True:
        try:
            taken.append(listener.accept()[0])
        except BlockingIOError:
            return True


def test_every_queued_connection_is_accepted_before_the_close() -> None:
    listener = _listener()
    address = listener.getsockname()
    clients = [socket.create_connection(address) for _ in range(5)]  # queued: nobody accepted them yet
    taken: list[socket.socket] = []
    close_when_empty(listener, lambda: _take_all(listener, taken))
    assert len(taken) == 5 and listener.fileno() == -1
    for client, server_side in zip(clients, taken, strict=True):
        client.sendall(b"ping")
        assert server_side.recv(4) == b"ping"  # established and served, not reset
        client.close()
        server_side.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)


def test_connections_arriving_during_the_drain_are_taken_too() -> None:
    listener = _listener()
    address = listener.getsockname()
    clients = [socket.create_connection(address)]
    taken: list[socket.socket] = []
    rounds = []

    def accept() -> bool:
        _take_all(listener, taken)
        rounds.append(len(taken))
        if len(rounds) == 1:  # a connection arrives after the first drain, before the close
            clients.append(socket.create_connection(address))
        return True

    close_when_empty(listener, accept)
    assert rounds == [1, 2] and len(taken) == 2
    for sock in clients + taken:
        sock.close()


def test_a_worker_at_its_limit_closes_with_what_is_left() -> None:
    listener = _listener()
    address = listener.getsockname()
    client = socket.create_connection(address)
    close_when_empty(listener, lambda: False)  # could take nothing more
    assert listener.fileno() == -1
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):  # what the kernel does to a connection left in the queue
        client.sendall(b"x" * 10)
        client.recv(1)
    client.close()
