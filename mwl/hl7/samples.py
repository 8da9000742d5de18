"""``mwl samples send``: the shipped sample messages, dated today, in an order that works.

The files in ``samples/hl7`` are templates dated 2026-11-20 (when the RIS sent them)
to 2026-11-24 (when the steps are scheduled). Sent as they are, a newcomer's day
list is empty; sent in shell order, the updates and the cancel come before the
orders they change. So every date of the sample week is moved: the sending day to
yesterday, the scheduled days to today (the times of day stay), and MSH-10 gets the
day appended, so that sending them twice on one day is recognised as a resend.
Birth dates are left alone (they are outside the sample week). The messages go out
in three groups: new orders, then patient updates (ADT), then the other order
controls (cancel and the like), each group by file name.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path

from mwl.errors import MwlError
from mwl.hl7.client import split_messages

# The week the templates are dated in: the day they were sent, then the schedule.
SENT_DAY = dt.date(2026, 11, 20)
SCHEDULED_DAYS = tuple(dt.date(2026, 11, day) for day in range(21, 25))
_SAMPLE_DATE = re.compile(rb"(?<!\d)(202611(?:2[0-4]))")


def samples_directory() -> Path:
    """``samples/hl7`` of the source tree this package runs from, else of the cwd."""
    beside = Path(__file__).resolve().parents[2] / "samples" / "hl7"
    return beside if beside.is_dir() else Path("samples") / "hl7"


def redate(message: bytes, today: dt.date) -> bytes:
    """``message`` with the sample week's dates moved to ``today`` (see the module)."""
    moved = {f"{SENT_DAY:%Y%m%d}".encode(): f"{today - dt.timedelta(days=1):%Y%m%d}".encode()}
    moved.update({f"{day:%Y%m%d}".encode(): f"{today:%Y%m%d}".encode() for day in SCHEDULED_DAYS})
    text = _SAMPLE_DATE.sub(lambda m: moved[m[1]], message)
    return _suffix_control_id(text, f"{today:%Y%m%d}")


def _suffix_control_id(message: bytes, suffix: str) -> bytes:
    segments = message.split(b"\r")
    header = segments[0]
    if not header.startswith(b"MSH") or len(header) < 4:
        return message
    separator = header[3:4]
    fields = header.split(separator)
    if len(fields) > 9 and fields[9]:
        fields[9] = fields[9] + b"-" + suffix.encode()
    segments[0] = separator.join(fields)
    return b"\r".join(segments)


def _field(message: bytes, segment: bytes, position: int) -> bytes:
    for line in message.split(b"\r"):
        if line.startswith(segment) and len(line) > 3:
            fields = line.split(line[3:4])
            index = position - 1 if segment == b"MSH" else position
            return fields[index] if index < len(fields) else b""
    return b""


def sending_rank(message: bytes) -> int:
    """0 for new orders, 1 for patient updates, 2 for every other order control."""
    if _field(message, b"MSH", 9).startswith(b"ADT"):
        return 1
    return 0 if _field(message, b"ORC", 1).strip().upper() == b"NW" else 2


def sample_batch(
    directory: Path, today: dt.date, only: Sequence[str] = ()
) -> list[tuple[str, bytes]]:
    """(file name, redated message) of every sample, in sending order.

    Raises
    ------
    MwlError
        No sample files in ``directory``.
    """
    paths = sorted(directory.glob("*.hl7"))
    if only:
        paths = [p for p in paths if p.name in only or p.stem in only]
    if not paths:
        raise MwlError(f"no sample messages (*.hl7) in {directory}")
    batch = [
        (str(path), redate(message, today))
        for path in paths
        for message in split_messages(path.read_bytes())
    ]
    # sorted() is stable: within a group the file order stays.
    return sorted(batch, key=lambda item: sending_rank(item[1]))
