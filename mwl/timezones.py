"""The site's time zone: one rule for every time the broker stores and compares.

The rule: a scheduled time is stored as the site's local wall-clock time, naive
(``scheduled_procedure_step.start_datetime``), because that is what the RIS means,
what a modality asks for (DICOM DA/TM carry no zone) and what the day list shows.
A time that arrives with a UTC offset (HL7 ``+hhmm``, DICOM Timezone Offset From
UTC) is an instant: it is converted to the site's zone before it is stored or
compared. Record times (``received_at`` and the like) stay naive UTC, as before.

In the hour that repeats when summer time ends, two instants have the same wall
time; they are stored alike (the offset of the later one is reported).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


@lru_cache(maxsize=32)
def site_zone(name: str = "") -> dt.tzinfo:
    """The zone called ``name`` (IANA), or the system's when ``name`` is empty.

    The system's is ``TZ``, else the zone ``/etc/localtime`` links to, else UTC.

    Raises
    ------
    ValueError
        ``name`` is not an IANA zone this system knows.
    """
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Zurich)") from None
    return _system_zone()


def _system_zone() -> dt.tzinfo:
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for candidate in candidates:
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return dt.UTC


def to_site(moment: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """An aware ``moment`` as the site's naive wall-clock time (naive: unchanged)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(zone).replace(tzinfo=None)


def from_offset(local: dt.datetime, offset: dt.timedelta, zone: dt.tzinfo) -> dt.datetime:
    """A naive time read at UTC ``offset``, as the site's naive wall-clock time."""
    return to_site(local.replace(tzinfo=dt.timezone(offset)), zone)


def site_now(zone: dt.tzinfo) -> dt.datetime:
    """Now, as the site's naive wall-clock time."""
    return dt.datetime.now(zone).replace(tzinfo=None)


def site_today(zone: dt.tzinfo) -> dt.date:
    """Today's date at the site."""
    return dt.datetime.now(zone).date()


def aware(local: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """The site's naive wall-clock time ``local`` as an instant in ``zone``.

    In the hour that repeats in autumn, the later one (standard time, ``fold=1``);
    in the hour skipped in spring, read with the offset before the change
    (``fold=0``, as PEP 495 does).
    """
    later = local.replace(tzinfo=zone, fold=1)
    earlier = local.replace(tzinfo=zone, fold=0)
    if later.utcoffset() == earlier.utcoffset():
        return earlier
    round_trip = earlier.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None)
    return earlier if round_trip != local else later


def utc_offset(local: dt.datetime, zone: dt.tzinfo) -> dt.timedelta:
    """The site's UTC offset at the naive wall-clock time ``local`` (see :func:`aware`)."""
    offset = aware(local, zone).utcoffset()
    return offset if offset is not None else dt.timedelta(0)


def format_offset(offset: dt.timedelta) -> str:
    """``+hhmm`` / ``-hhmm`` (DICOM Timezone Offset From UTC, HL7 TS)."""
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{rest:02d}"


def parse_offset(text: str) -> dt.timedelta:
    """``+hhmm`` / ``-hhmm`` as a timedelta (-12:00 .. +14:00).

    Raises
    ------
    ValueError
        Not an offset of that form or range.
    """
    match = _OFFSET.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a UTC offset (+hhmm or -hhmm)")
    sign = -1 if match[1] == "-" else 1
    hours, minutes = int(match[2]), int(match[3])
    if minutes >= 60 or not -12 * 60 <= sign * (hours * 60 + minutes) <= 14 * 60:
        raise ValueError(f"{text!r} is not a UTC offset between -1200 and +1400")
    return sign * dt.timedelta(hours=hours, minutes=minutes)
