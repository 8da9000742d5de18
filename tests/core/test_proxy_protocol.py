"""The PROXY protocol header parser and reader (mwl/proxy_protocol.py), over socket pairs."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

import pytest

from mwl.proxy_protocol import (
    MAX_V2_PAYLOAD,
    SIGNATURE_V2,
    Balancers,
    ProxyHeaderError,
    parse,
    peer_behind,
    read_header,
)


def v2(
    command: int = 0x1,
    family: int = 0x11,
    source: str = "127.0.0.2",
    destination: str = "127.0.0.1",
    ports: tuple[int, int] = (40001, 2575),
    tlvs: bytes = b"",
    length: int | None = None,
) -> bytes:
    """A v2 header as HAProxy writes it (family 0x11 TCP over IPv4, 0x21 over IPv6)."""
    addresses = b""
    if family in (0x11, 0x21):
        addresses = (
            ipaddress.ip_address(source).packed
            + ipaddress.ip_address(destination).packed
            + struct.pack("!HH", *ports)
        )
    payload = addresses + tlvs
    size = len(payload) if length is None else length
    return SIGNATURE_V2 + bytes([0x20 | command, family]) + struct.pack("!H", size) + payload


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def test_v2_tcp4_names_the_caller_and_takes_only_the_header():
    data = v2(tlvs=tlv(0x05, b"unique-id")) + b"\x01\x00rest"
    header, used = parse(data)  # type: ignore[misc]
    assert header.version == 2
    assert header.source == ("127.0.0.2", 40001)
    assert header.destination == ("127.0.0.1", 2575)
    assert header.tlvs == ((0x05, b"unique-id"),)
    assert data[used:] == b"\x01\x00rest"


def test_v2_tcp6():
    header, _ = parse(v2(family=0x21, source="2001:db8::7", destination="::1"))  # type: ignore[misc]
    assert header.source == ("2001:db8::7", 40001)
    assert header.destination == ("::1", 2575)


def test_v2_local_is_the_balancers_own_check():
    header, used = parse(v2(command=0x0, family=0x00))  # type: ignore[misc]
    assert header.local and header.source is None
    assert used == 16


def test_v2_unspec_and_unix_carry_no_address():
    header, _ = parse(v2(family=0x00))  # type: ignore[misc]
    assert header.local
    unix = SIGNATURE_V2 + bytes([0x21, 0x31]) + struct.pack("!H", 216) + bytes(216)
    header, _ = parse(unix)  # type: ignore[misc]
    assert header.local


@pytest.mark.parametrize("cut", [1, 11, 12, 15, 16, 20, 27])
def test_a_truncated_v2_header_asks_for_the_rest_only(cut: int):
    whole = v2()
    wanted = parse(whole[:cut])
    assert isinstance(wanted, int)
    # Never more than is still header: nothing of the payload behind it is consumed.
    assert 1 <= wanted <= len(whole) - cut


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00\x00\x00\xcc\x00\x02",  # a DICOM A-ASSOCIATE-RQ without a header
        b"\x0bMSH|^~\\&|",  # an MLLP frame without a header
        b"GET / HTTP/1.1\r\n",
        SIGNATURE_V2[:11] + b"X",
    ],
)
def test_wrong_signature_is_refused_at_once(data: bytes):
    with pytest.raises(ProxyHeaderError, match="signature"):
        parse(data)


def test_bad_v2_fields_are_refused():
    with pytest.raises(ProxyHeaderError, match="version"):
        parse(SIGNATURE_V2 + b"\x11\x11\x00\x00")
    with pytest.raises(ProxyHeaderError, match="command"):
        parse(v2(command=0x2))
    with pytest.raises(ProxyHeaderError, match="family"):
        parse(v2(family=0x41))
    with pytest.raises(ProxyHeaderError, match="truncated"):
        parse(v2(length=8)[:24])


def test_oversize_and_malformed_tlvs_are_refused():
    with pytest.raises(ProxyHeaderError, match="at most"):
        parse(SIGNATURE_V2 + b"\x21\x11" + struct.pack("!H", MAX_V2_PAYLOAD + 1))
    with pytest.raises(ProxyHeaderError, match="at most"):
        parse(SIGNATURE_V2 + b"\x21\x11\xff\xff")
    with pytest.raises(ProxyHeaderError, match="longer than the header"):
        parse(v2(tlvs=b"\x05\x00\x10abc"))
    with pytest.raises(ProxyHeaderError, match="TLV truncated"):
        parse(v2(tlvs=b"\x05\x00"))


def test_v1_lines():
    header, used = parse(b"PROXY TCP4 127.0.0.2 127.0.0.1 40001 2575\r\nMSH")  # type: ignore[misc]
    assert header.version == 1 and header.source == ("127.0.0.2", 40001)
    assert used == len(b"PROXY TCP4 127.0.0.2 127.0.0.1 40001 2575\r\n")
    header, _ = parse(b"PROXY TCP6 2001:db8::1 ::1 5 6\r\n")  # type: ignore[misc]
    assert header.source == ("2001:db8::1", 5)
    header, used = parse(b"PROXY UNKNOWN\r\n\x01")  # type: ignore[misc]
    assert header.local and used == 15
    for bad in (
        b"PROXY TCP4 127.0.0.2 127.0.0.1 40001\r\n",
        b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 127.0.0.2 127.0.0.1 1 65536\r\n",
        b"PROXY TCP4 127.0.0.2 127.0.0.1 01 2\r\n",
        b"PROXY UDP4 127.0.0.2 127.0.0.1 1 2\r\n",
    ):
        with pytest.raises(ProxyHeaderError):
            parse(bad)
    with pytest.raises(ProxyHeaderError, match="longer"):
        parse(b"PROXY TCP4 " + b"1" * 120)
    assert parse(b"PROXY TCP4 127.0.0.2") == 1


def test_read_header_consumes_nothing_after_it_even_when_it_drips_in():
    server, client = socket.socketpair()
    with server, client:
        data = v2() + b"\x01\x00payload"

        def drip() -> None:
            for i in range(len(data)):
                client.send(data[i : i + 1])
                time.sleep(0.002)

        sender = threading.Thread(target=drip)
        sender.start()
        header = read_header(server, timeout=5)
        sender.join()
        assert header.source == ("127.0.0.2", 40001)
        server.settimeout(5)
        rest = b""
        while len(rest) < 9:
            rest += server.recv(100)
        assert rest == b"\x01\x00payload"


def test_read_header_v1_leaves_the_frame():
    server, client = socket.socketpair()
    with server, client:
        client.sendall(b"PROXY TCP4 10.0.0.9 10.0.0.1 1234 2575\r\n\x0bMSH|")
        assert peer_behind(server, ("10.0.0.5", 1), timeout=5) == ("10.0.0.9", 1234)
        assert server.recv(100) == b"\x0bMSH|"


def test_local_keeps_the_connections_address():
    server, client = socket.socketpair()
    with server, client:
        client.sendall(v2(command=0x0, family=0x00))
        assert peer_behind(server, ("10.0.0.5", 7), timeout=5) == ("10.0.0.5", 7)


def test_silence_truncation_and_close_end_within_the_deadline():
    server, client = socket.socketpair()
    with server, client:
        client.sendall(v2()[:20])  # truncated, and then nothing
        started = time.monotonic()
        with pytest.raises(ProxyHeaderError, match="within 0.3s"):
            read_header(server, timeout=0.3)
        assert time.monotonic() - started < 3
    server, client = socket.socketpair()
    with server:
        client.sendall(v2()[:20])
        client.close()
        with pytest.raises(ProxyHeaderError, match="closed"):
            read_header(server, timeout=5)


def test_balancers():
    balancers = Balancers(["127.0.0.1", "10.1.0.0/16", "fd00::/8"])
    assert "127.0.0.1" in balancers
    assert "::ffff:127.0.0.1" in balancers
    assert "10.1.200.3" in balancers
    assert "fd00::5" in balancers
    assert "127.0.0.2" not in balancers
    assert "not an address" not in balancers
    assert bool(balancers)
    assert not Balancers([])
    assert "127.0.0.1" not in Balancers([])
