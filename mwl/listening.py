"""Listening sockets and the wait for connections, shared by the DICOM and MLLP listeners.

Each listener has one thread that sleeps in ``poll`` on its listening sockets and on a
wake-up pipe: it costs nothing while nobody connects, and stopping it needs no timeout
(the pipe ends the wait at once).
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mwl.tls import ReloadingContext

# The kernel caps the backlog at net.core.somaxconn anyway; 1,024 lets a burst of
# modalities or a RIS reconnecting after a failover queue instead of being refused.
_BACKLOG = 1024


@dataclass
class Listener:
    """A listening socket and the TLS context of its port (None: plain)."""

    sock: socket.socket
    tls: ReloadingContext | None


def listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on ``host``:``port`` (0: an ephemeral port).

    Raises
    ------
    OSError
        The address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(min(socket.SOMAXCONN, _BACKLOG))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Wakeup:
    """A pipe whose write end ends an accept loop's ``poll`` at once."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        try:
            os.write(self._write, b"x")
        except OSError:
            pass  # already closed, or full: the loop is woken either way

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


def ready_listeners(
    listeners: Sequence[Listener], wakeup: Wakeup, stopping: threading.Event
) -> Iterator[Listener]:
    """Each listener that has a connection waiting, as it comes, until ``stopping`` is set.

    The caller accepts (and decides) itself; a listener it does not accept from is
    yielded again at the next wait.
    """
    poller = select.poll()
    poller.register(wakeup.fileno(), select.POLLIN)
    by_fd = {}
    for listener in listeners:
        poller.register(listener.sock.fileno(), select.POLLIN)
        by_fd[listener.sock.fileno()] = listener
    while not stopping.is_set():
        for fd, _events in poller.poll():
            if fd != wakeup.fileno() and not stopping.is_set():
                yield by_fd[fd]
