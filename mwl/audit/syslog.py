"""Syslog transports for audit messages: RFC 5424 messages over TLS (RFC 5425) or UDP (RFC 5426).

Standard library only. TLS (and plain TCP, for labs) frames each message with
octet counting (``LEN SP MSG``); UDP sends one message per datagram and cannot
know whether it arrived.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl

from mwl.tls import ReloadingClientContext

# RFC 5424 6.2.1: facility 10 (security/authorization, "authpriv"), severity 5 (notice).
_PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
APP_NAME = "mwl"
_UDP_MAX = 65_000  # an IPv4 datagram's payload, less headers


def _field(value: str, limit: int) -> str:
    # PRINTUSASCII without spaces, or NILVALUE.
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


def syslog_message(xml: str, hostname: str, *, at: dt.datetime | None = None) -> bytes:
    """One RFC 5424 message: header, no structured data, the UTF-8 XML with a BOM (6.4)."""
    when = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    header = (
        f"<{_PRI}>1 {when.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} "
        f"{_field(hostname, 255)} {APP_NAME} {os.getpid()} {MSGID} - "
    )
    return header.encode("ascii") + b"\xef\xbb\xbf" + xml.encode("utf-8")


class SyslogClient:
    """Sends syslog messages to one collector; reconnects as needed (TCP/TLS).

    Parameters
    ----------
    host, port
        The audit repository.
    transport
        ``tls``, ``udp`` or ``tcp``.
    tls
        The client context (for ``tls``): the CA, and our certificate for mutual TLS.
    timeout
        Connect and send timeout in seconds.
    """

    def __init__(
        self,
        host: str,
        port: int,
        transport: str,
        tls: ReloadingClientContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        if transport == "tls" and tls is None:
            raise ValueError("the tls transport needs a client context")
        self.host, self.port, self.transport = host, port, transport
        self._tls = tls
        self._timeout = timeout
        self._sock: socket.socket | None = None

    def send(self, messages: list[bytes]) -> None:
        """Send ``messages`` in order; raises OSError when the collector cannot be reached."""
        if self.transport == "udp":
            self._send_udp(messages)
            return
        sock = self._connect()
        data = b"".join(b"%d %s" % (len(m), m) for m in messages)
        try:
            sock.sendall(data)
        except OSError:
            self.close()
            raise

    def _send_udp(self, messages: list[bytes]) -> None:
        if self._sock is None:
            info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(info[0], socket.SOCK_DGRAM)
            self._sock.connect(info[4])
        for message in messages:
            # RFC 5426 3.2: too large for a datagram is truncated by the receiver anyway.
            self._sock.send(message[:_UDP_MAX])

    def connection_alive(self) -> bool:
        """Whether the stream connection is still open (False for UDP or none open).

        RFC 5425 has no acknowledgement: a message is known to have been taken only
        once the collector kept the connection open after it.
        """
        if self.transport == "udp" or self._sock is None:
            return False
        if self._peer_closed(self._sock):
            self.close()
            return False
        return True

    def _connect(self) -> socket.socket:
        if self._sock is not None and not self._peer_closed(self._sock):
            return self._sock
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        if self._tls is not None and self.transport == "tls":
            try:
                sock = self._tls.current().wrap_socket(sock, server_hostname=self.host)
            except OSError:
                sock.close()
                raise
        self._sock = sock
        return sock

    def _peer_closed(self, sock: socket.socket) -> bool:
        # A collector that restarted closed our connection; a send would vanish into it.
        try:
            sock.setblocking(False)
            try:
                data = sock.recv(1)
            except (BlockingIOError, ssl.SSLWantReadError):
                return False
            except OSError:
                return True
            return data == b""
        finally:
            with contextlib.suppress(OSError):
                sock.setblocking(True)
                sock.settimeout(self._timeout)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
