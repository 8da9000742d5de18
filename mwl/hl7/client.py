"""A small MLLP client: send HL7 messages, wait for each ACK (tests, ``mwl hl7 send``)."""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from mwl.hl7.mllp import MllpFramer, frame

# An ACK is small; anything this large is not an ACK.
_MAX_ACK_BYTES = 1_048_576


def send_messages(
    host: str, port: int, payloads: Iterable[bytes], timeout: float = 10.0
) -> list[bytes]:
    """Send each payload over one connection and wait for its ACK before the next.

    Parameters
    ----------
    host, port
        The MLLP listener.
    payloads
        HL7 messages, segments separated by CR, not framed.
    timeout
        Seconds to wait for the connection and for each ACK.

    Returns
    -------
    list of bytes
        One ACK payload per message, in order.

    Raises
    ------
    OSError
        Connection refused, timeout (``TimeoutError``), or the listener closed the
        connection before acknowledging (``ConnectionError``).
    """
    return list(iter_acks(host, port, payloads, timeout))


def iter_acks(
    host: str, port: int, payloads: Iterable[bytes], timeout: float = 10.0
) -> Iterator[bytes]:
    """Like :func:`send_messages`, but yield each ACK as soon as it has come."""
    framer = MllpFramer(_MAX_ACK_BYTES)
    pending: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for payload in payloads:
            sock.sendall(frame(payload))
            while not pending:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the listener closed the connection without an ACK")
                pending.extend(framer.feed(data))
            yield pending.pop(0)


def split_messages(data: bytes) -> list[bytes]:
    """The messages in a file: each starts with an MSH segment; CR, LF or CR LF end lines.

    Returns
    -------
    list of bytes
        Messages with segments separated by CR (as MLLP carries them).
    """
    messages: list[list[bytes]] = []
    for line in re.split(rb"\r\n|\r|\n", data):
        if not line.strip():
            continue
        if line.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return [b"\r".join(segments) + b"\r" for segments in messages]


def _field(message: bytes, segment: bytes, position: int) -> str:
    for line in message.split(b"\r"):
        if line.startswith(segment) and len(line) > 3:
            fields = line.decode("latin-1").split(chr(line[3]))
            if segment == b"MSH":
                position -= 1  # fields[1] is MSH-2
            return fields[position] if position < len(fields) else ""
    return ""


def ack_summary(ack: bytes) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, error text) of an ACK; the text from ERR-8, ERR-3.2 or MSA-3."""
    code = _field(ack, b"MSA", 1)
    control_id = _field(ack, b"MSA", 2)
    text = _field(ack, b"ERR", 8) or _field(ack, b"MSA", 3)
    if not text:
        err3 = _field(ack, b"ERR", 3) or _field(ack, b"ERR", 1)
        text = err3.replace("&", "^")
    return code, control_id, text


def send_files(
    host: str,
    port: int,
    paths: Sequence[Path | str],
    progress: bool = True,
    *,
    timeout: float = 10.0,
    out: TextIO | None = None,
) -> int:
    """Send the messages in ``paths`` (several per file allowed); print one line per ACK.

    Each line is ``<MSA-1> <MSH-10> <file>`` plus the error text for AE/AR. A progress
    bar goes to standard error when ``progress`` is true and it is a terminal.

    Returns
    -------
    int
        Exit code: 0 when every message got AA, 1 when any got AE/AR, 2 when a file
        could not be read or the listener could not be reached.
    """
    batch = _read_messages(paths)
    if not batch:
        return 2
    return send_batch(host, port, batch, progress, timeout=timeout, out=out)


def send_batch(
    host: str,
    port: int,
    batch: Sequence[tuple[str, bytes]],
    progress: bool = True,
    *,
    timeout: float = 10.0,
    out: TextIO | None = None,
) -> int:
    """Send ``(name, message)`` pairs in order; print and return as :func:`send_files`."""
    out = out or sys.stdout
    bar = _ProgressBar(len(batch), enabled=progress and sys.stderr.isatty())
    status = 0
    acks = iter_acks(host, port, (message for _, message in batch), timeout)
    try:
        for index, ((name, message), ack) in enumerate(zip(batch, acks, strict=False), start=1):
            line, accepted = _ack_line(name, message, ack)
            bar.clear()
            print(line, file=out)
            if not accepted:
                status = 1
            bar.show(index)
    except OSError as exc:
        bar.end()
        print(f"error: {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    bar.end()
    return status


def _ack_line(name: str, message: bytes, ack: bytes) -> tuple[str, bool]:
    """``<MSA-1> <MSH-10> <file>`` (with the error text unless AA), and whether it is AA."""
    code, _, text = ack_summary(ack)
    control_id = _field(message, b"MSH", 10)
    line = f"{code or '??'} {control_id or '-'} {name}"
    return (f"{line}: {text}" if code != "AA" and text else line), code == "AA"


def _read_messages(paths: Sequence[Path | str]) -> list[tuple[str, bytes]]:
    """(file name, message) of every message in ``paths``; empty after printing an error."""
    batch: list[tuple[str, bytes]] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return []
        batch.extend((str(path), message) for message in split_messages(data))
    if not batch:
        print("error: no HL7 messages found", file=sys.stderr)
    return batch


class _ProgressBar:
    """A one-line progress bar on standard error; does nothing when not enabled."""

    WIDTH = 30

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled

    def clear(self) -> None:
        """Clear the bar's line, so that a line of output can take its place."""
        if self.enabled:
            sys.stderr.write("\r\x1b[K")

    def show(self, done: int) -> None:
        """Draw the bar for ``done`` of ``total`` messages."""
        if self.enabled:
            filled = int(self.WIDTH * done / self.total)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            sys.stderr.write(f"\r[{bar}] {done}/{self.total}")
            sys.stderr.flush()

    def end(self) -> None:
        """Leave the bar's line."""
        if self.enabled:
            sys.stderr.write("\n")
