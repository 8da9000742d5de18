"""The PROXY protocol header a TCP balancer puts in front of a connection (HAProxy's spec).

Behind HAProxy, Keepalived-less cloud balancers and the like, every connection to the
MLLP and DICOM listeners comes from the balancer's address. With ``send-proxy-v2``
(or ``send-proxy``, the v1 text line) the balancer first writes who really called;
the listeners read that header, only on connections from the addresses in
``proxy_protocol_from``, and use the caller's address from then on: AE profiles with
a host, ``hl7_allowed_peers``, the per-address limits, the query log, audit records
and log lines. A header from any other address is not looked for, so a caller cannot
claim someone else's address by sending one.

Reading is bounded: at most :data:`MAX_V2_PAYLOAD` bytes after the fixed 16, or 107
for the v1 line, before :data:`HEADER_TIMEOUT_SECONDS`; nothing beyond the header is
consumed, so the DICOM PDU or MLLP frame (or the TLS handshake) that follows is read
by the listener as if the header had not been there.
"""

from __future__ import annotations

import ipaddress
import math
import select
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

SIGNATURE_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
# The longest v1 line, CRLF included ("PROXY TCP6" and two full IPv6 addresses).
V1_MAX_BYTES = 107
# Addresses (at most 216 bytes, AF_UNIX) and TLVs after the fixed 16 bytes. HAProxy's
# own TLVs (ALPN, authority, unique id, SSL details) stay well below; a balancer that
# sends more is misconfigured, and a bound keeps what one connection can make us
# buffer small.
MAX_V2_PAYLOAD = 2048
# HAProxy writes the header at once when it connects, before any byte of the caller.
HEADER_TIMEOUT_SECONDS = 5.0

_LOCAL, _PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_ADDRESS_BYTES = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyHeaderError(ValueError):
    """What arrived is not a valid PROXY protocol header (or not all of it, in time)."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header.

    ``source`` and ``destination`` are None for the LOCAL command (the balancer's
    own health check) and for v1 ``UNKNOWN`` or address families that carry no IP
    address: the connection's own addresses then stand.
    """

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def local(self) -> bool:
        """Whether the header names no caller (use the balancer's own address)."""
        return self.source is None


def parse(data: bytes) -> tuple[ProxyHeader, int] | int:
    """Parse a header at the start of ``data``.

    Returns
    -------
    tuple or int
        ``(header, bytes it took)`` when ``data`` holds a whole header; otherwise how
        many more bytes are certainly part of it (at least 1: read that many next).

    Raises
    ------
    ProxyHeaderError
        ``data`` cannot be the start of a valid header.
    """
    if len(data) < 12 and SIGNATURE_V2.startswith(data):
        # Short of the v2 signature, and of the shortest v1 line ("PROXY UNKNOWN\r\n").
        return 12 - len(data)
    if data[:12] == SIGNATURE_V2:
        if len(data) < 16:
            return 16 - len(data)
        length = int.from_bytes(data[14:16], "big")
        if length > MAX_V2_PAYLOAD:
            raise ProxyHeaderError(f"v2 header of {length} bytes (at most {MAX_V2_PAYLOAD})")
        if len(data) < 16 + length:
            return 16 + length - len(data)
        return _parse_v2(data[: 16 + length]), 16 + length
    if data[:6] == _V1_PREFIX[: len(data)]:
        end = data.find(b"\r\n", 0, V1_MAX_BYTES)
        if end < 0:
            if len(data) >= V1_MAX_BYTES:
                raise ProxyHeaderError(f"v1 line longer than {V1_MAX_BYTES} bytes")
            # Where the line ends is not known: up to the shortest line, then byte by byte.
            return max(1, len(b"PROXY UNKNOWN\r\n") - len(data))
        return _parse_v1(data[:end]), end + 2
    raise ProxyHeaderError("no PROXY protocol signature")


def _parse_v2(header: bytes) -> ProxyHeader:
    version, command = header[12] >> 4, header[12] & 0x0F
    family, transport = header[13] >> 4, header[13] & 0x0F
    payload = header[16:]
    if version != 2:
        raise ProxyHeaderError(f"v2 signature with version {version}")
    if command == _LOCAL:
        return ProxyHeader(2, None, None)
    if command != _PROXY:
        raise ProxyHeaderError(f"unknown v2 command {command:#x}")
    if family not in (_AF_UNSPEC, *_ADDRESS_BYTES) or transport > 2:
        raise ProxyHeaderError(f"unknown v2 address family/transport {header[13]:#04x}")
    size = _ADDRESS_BYTES.get(family, 0)
    if len(payload) < size:
        raise ProxyHeaderError(f"v2 addresses truncated ({len(payload)} of {size} bytes)")
    tlvs = _tlvs(payload[size:])
    if family not in (_AF_INET, _AF_INET6) or transport != _STREAM:
        # UNSPEC and UNIX carry no IP address: the spec says to use the connection's.
        return ProxyHeader(2, None, None, tlvs)
    half = (size - 4) // 2
    source = ipaddress.ip_address(payload[:half])
    destination = ipaddress.ip_address(payload[half : 2 * half])
    sport, dport = struct.unpack_from("!HH", payload, 2 * half)
    return ProxyHeader(2, (str(source), sport), (str(destination), dport), tlvs)


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    found = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyHeaderError("v2 TLV truncated")
        kind, length = data[offset], struct.unpack_from("!H", data, offset + 1)[0]
        offset += 3
        if length > len(data) - offset:
            raise ProxyHeaderError(f"v2 TLV {kind:#04x} longer than the header")
        found.append((kind, data[offset : offset + length]))
        offset += length
    return tuple(found)


def _parse_v1(line: bytes) -> ProxyHeader:
    try:
        parts = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 line is not ASCII") from None
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, None, None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 line is not PROXY TCP4|TCP6 src dst sport dport")
    want = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    try:
        source, destination = want(parts[2]), want(parts[3])
        sport, dport = (_port(p) for p in parts[4:6])
    except ValueError:
        raise ProxyHeaderError("v1 line has a bad address or port") from None
    return ProxyHeader(1, (str(source), sport), (str(destination), dport))


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ValueError(text)
    return int(text)


def read_header(sock: socket.socket, timeout: float = HEADER_TIMEOUT_SECONDS) -> ProxyHeader:
    """Read the header from ``sock`` (blocking or not), and no byte after it.

    Raises
    ------
    ProxyHeaderError
        Not a valid header, or the peer closed or stayed silent before its end.
    """
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    data = b""
    while True:
        outcome = parse(data)
        if isinstance(outcome, tuple):
            return outcome[0]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(max(1, math.ceil(remaining * 1000))):
            raise ProxyHeaderError(f"no complete header within {timeout:g}s ({len(data)} bytes)")
        try:
            chunk = sock.recv(outcome, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            raise ProxyHeaderError(f"connection failed: {exc.strerror or exc}") from None
        if not chunk:
            raise ProxyHeaderError(f"connection closed after {len(data)} bytes of header")
        data += chunk


def peer_behind(
    sock: socket.socket, peer: tuple[str, int], timeout: float = HEADER_TIMEOUT_SECONDS
) -> tuple[str, int]:
    """The caller's (host, port) from the header on ``sock``; ``peer`` for a LOCAL one.

    Raises
    ------
    ProxyHeaderError
        As :func:`read_header`.
    """
    header = read_header(sock, timeout)
    return header.source if header.source is not None else peer


class Balancers:
    """The addresses (networks) whose connections start with a PROXY protocol header."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, host: object) -> bool:
        if not self._networks or not isinstance(host, str):
            return False
        try:
            address = plain_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)


def plain_address(host: str) -> Address:
    """``host`` as an IP address, without a zone and with IPv4-mapped IPv6 as IPv4.

    Raises
    ------
    ValueError
        ``host`` is not an IP address.
    """
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
