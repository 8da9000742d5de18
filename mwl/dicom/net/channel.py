"""One association's socket, plain TCP or TLS: every wait is a ``poll`` with a deadline.

The socket is non-blocking and a thread only ever sleeps in ``poll`` on it, so an
idle association costs nothing until bytes arrive or its deadline passes, and the
thread that writes an answer can also see, without waiting, whether the peer has
sent something (a C-CANCEL, an A-ABORT) in between.
"""

from __future__ import annotations

import math
import select
import socket
import ssl
import time

_RECV_SIZE = 256 * 1024
_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class ConnectionClosedError(ConnectionError):
    """The peer closed or reset the connection (or TLS failed under it)."""


class DeadlineError(TimeoutError):
    """Nothing arrived (or nothing could be written) before the deadline."""


class Channel:
    """A connected socket used by one thread, with waits bounded by deadlines.

    Parameters
    ----------
    sock
        The accepted socket, or an ``ssl.SSLSocket`` wrapping it (handshake not
        yet done: see :meth:`handshake`).
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._poll = select.poll()
        self._poll.register(self._fd, _READ)
        self.tls = isinstance(sock, ssl.SSLSocket)

    def _wait(self, events: int, deadline: float | None) -> int:
        if deadline is None:
            timeout_ms = None
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineError("deadline passed")
            timeout_ms = max(1, math.ceil(remaining * 1000))
        self._poll.modify(self._fd, events)
        ready = self._poll.poll(timeout_ms)
        if not ready:
            raise DeadlineError("deadline passed")
        return ready[0][1]

    def handshake(self, deadline: float) -> None:
        """Complete the TLS handshake before ``deadline`` (no-op on plain TCP).

        Raises
        ------
        ConnectionClosedError
            The peer left, or the handshake failed (protocol, cipher, certificate).
        DeadlineError
            The handshake did not finish in time.
        """
        if not isinstance(self.sock, ssl.SSLSocket):
            return
        while True:
            try:
                self.sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                self._wait(_READ, deadline)
            except ssl.SSLWantWriteError:
                self._wait(_WRITE, deadline)
            except (ssl.SSLError, OSError) as exc:
                raise ConnectionClosedError(f"TLS handshake failed: {exc}") from None

    def recv(self, deadline: float | None) -> bytes:
        """Bytes from the peer, waiting until ``deadline`` at most.

        Raises
        ------
        ConnectionClosedError
            The peer closed or reset the connection.
        DeadlineError
            Nothing arrived before ``deadline``.
        """
        while True:
            try:
                data = self.sock.recv(_RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                self._wait(_READ, deadline)
                continue
            except ssl.SSLWantWriteError:
                self._wait(_WRITE, deadline)
                continue
            except (ssl.SSLError, OSError) as exc:
                raise ConnectionClosedError(str(exc) or type(exc).__name__) from None
            if not data:
                raise ConnectionClosedError("the peer closed the connection")
            return data

    def readable(self) -> bool:
        """Whether bytes (or the peer's close) are waiting, without waiting for them."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        self._poll.modify(self._fd, _READ)
        return bool(self._poll.poll(0))

    def send_some(self, data: memoryview) -> int:
        """Write what the socket takes now; 0 when its buffer is full.

        Raises
        ------
        ConnectionClosedError
            The peer closed or reset the connection.
        """
        try:
            return self.sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionClosedError(str(exc) or type(exc).__name__) from None

    def wait_writable_or_readable(self, deadline: float) -> tuple[bool, bool]:
        """Sleep until the socket takes more bytes or the peer sent some.

        Returns
        -------
        tuple
            ``(readable, writable)``.

        Raises
        ------
        DeadlineError
            Neither happened before ``deadline``: the peer stopped reading.
        """
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True, False
        events = self._wait(_READ | _WRITE, deadline)
        return bool(events & (_READ | _GONE)), bool(events & _WRITE)

    def send_all(self, data: bytes, deadline: float) -> None:
        """Write all of ``data``; waits no later than ``deadline`` for room.

        Raises
        ------
        ConnectionClosedError, DeadlineError
            As :meth:`recv`.
        """
        view = memoryview(data)
        while view:
            sent = self.send_some(view)
            if sent:
                view = view[sent:]
                continue
            self._wait(_WRITE, deadline)

    def close(self) -> None:
        """Close the socket (no TLS close_notify wait: the peer may be gone)."""
        try:
            self._poll.unregister(self._fd)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
