"""Closing a listening socket without resetting a connection: close it at a moment its accept queue is empty.

Closing a listener resets every connection still queued in it (established by the kernel, not yet accepted).
A worker that stops accepts what waits, then closes; but between its last accept and the close, other
threads of the process take the GIL (every syscall releases it) and the scheduler may run them for
milliseconds, while new connections keep queueing. Here the check that the queue is empty and the close are
two libc calls made through ctypes.PyDLL, which keeps the GIL: no thread of the process runs between them,
so the window shrinks to two syscalls.
"""

from __future__ import annotations

import ctypes
import select
import socket
from collections.abc import Callable


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


_LIBC = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the calls keep the GIL
# Bound once: looking a function up on the library runs Python code, where the GIL could change hands.
_poll = _LIBC.poll
_poll.argtypes, _poll.restype = (ctypes.POINTER(_PollFd), ctypes.c_ulong, ctypes.c_int), ctypes.c_int
_close = _LIBC.close
_close.argtypes, _close.restype = (ctypes.c_int,), ctypes.c_int


def close_when_empty(listener: socket.socket, accept: Callable[[], bool]) -> None:
    """Serve what waits in the listener's accept queue, then close it while the queue is empty.

    `accept()` takes the waiting connections (non-blocking) and says whether it could take more; when it
    cannot (the worker is at its connection limit), the listener is closed with what is left in it.
    """
    fd = listener.fileno()
    waiting = _PollFd(fd, select.POLLIN, 0)
    while accept() and _poll(ctypes.byref(waiting), 1, 0) != 0:
        pass  # connections arrived after the last accept: take them too
    # The GIL was taken back when accept()'s last syscall returned, microseconds ago, and is held from the
    # poll to the close: another thread can force a switch only after waiting a whole switch interval (5 ms).
    _close(fd)
    listener.detach()  # the socket object forgets the descriptor libc closed
