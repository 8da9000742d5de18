"""Identifier dataset -> WorklistQuery: PS3.4 K.6.1.2 keys, C.2.2.2 matching kinds, validated.

The translation is pure (no database, no sockets). Values are read decoded:
pydicom applies the query's Specific Character Set (0008,0005) when an element
is accessed. Query/Retrieve Level is not required and is ignored (an MWL
Identifier has none, PS3.4 K.6.1.2).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import MAX_VALUE_LEN

from mwl.dicom import keys as keytable
from mwl.dicom.keys import START, KeySpec, Level
from mwl.domain import KeyMatch, MatchKind, SpsStatus, WorklistQuery
from mwl.errors import InvalidQueryError
from mwl.timezones import from_offset, parse_offset
from mwl.worklist.matching import START_TIME, STATUS

# VRs whose values may hold wildcards (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
# Keywords that are never matching keys (they describe the Identifier itself).
_IGNORED = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel"})
_TIMEZONE_OFFSET = "TimezoneOffsetFromUTC"
# Statuses a modality may ask for: the DICOM defined terms (HELD is the broker's own).
_ASKABLE_STATUSES = {s.value: s for s in SpsStatus if s is not SpsStatus.HELD}

# Longest value per VR (PS3.5 Table 6.2-1), in characters: pydicom's table, plus the
# VRs it leaves out, with the lengths a query with range matching allows (DA 18,
# DT 54, TM 28: two values and the hyphen). PN is 64 per component group. UC, UR, UT
# have no limit of their own (the Identifier's size limit bounds them).
_MAX_QUERY_LENGTH = {**MAX_VALUE_LEN, "AS": 4, "DA": 18, "DT": 54, "TM": 28}
_PN_GROUP_LENGTH = 64

# Keys whose values are enumerated: a value outside them is held by no item, so it
# is ignored (reported, 0xFF01) rather than matched into an empty worklist.
# PS3.3 C.7.1.1 Patient's Sex: M, F, O; C.7.1.4 / CP-2447 Pregnancy Status: 1-4.
ENUMERATED: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "PregnancyStatus": frozenset({"1", "2", "3", "4"}),
}

_DATE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")  # YYYYMMDD; YYYY.MM.DD (ACR-NEMA) too
_WILDCARD = re.compile(r"[*?]")
_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")


# Why a value was not used for matching: codes (the preview page translates them)
# and the query log's English.
NOT_HELD = "not-held"
NOT_MATCHED = "return-only"
ON_REQUEST = "on-request"
NOT_ENUMERATED = "not-enumerated"
_REASON_TEXT = {
    NOT_HELD: "the broker holds no value for this key",
    NOT_MATCHED: "a return key only, not matched on",
    ON_REQUEST: "matched only for AEs whose profile lists it in match_keys",
    NOT_ENUMERATED: "not one of its enumerated values",
}


@dataclass(frozen=True)
class IgnoredKey:
    """A key whose value was not used for matching, and why (PS3.4 K.2.2.1.1.2)."""

    keyword: str
    reason: str
    values: tuple[str, ...] = ()
    #: For :data:`NOT_ENUMERATED`: the values the key may have.
    allowed: tuple[str, ...] = ()

    def __str__(self) -> str:
        shown = " " + repr("\\".join(self.values)) if self.values else ""
        allowed = f" ({', '.join(self.allowed)})" if self.allowed else ""
        return f"{self.keyword}{shown} ignored: {_REASON_TEXT[self.reason]}{allowed}"


@dataclass(frozen=True)
class ParsedIdentifier:
    """The result of translating an Identifier.

    Attributes
    ----------
    query
        The domain query.
    ignored
        Keys that carried a matching value the broker did not use: keys it does not
        match on (or only on request), values outside a key's enumerated values.
        Each was ignored (PS3.4 K.2.2.1.1.2), which the pending status reports as
        0xFF01 (PS3.4 Table K.4-1).
    """

    query: WorklistQuery
    ignored: tuple[IgnoredKey, ...] = ()
    #: Timezone Offset From UTC (0008,0201) of the query: its dates and times were
    #: read in it, and the responses are written in it.
    offset: dt.timedelta | None = None
    #: Whether the query asked for Timezone Offset From UTC (with a value or without).
    asks_offset: bool = False

    @property
    def unsupported_keys(self) -> tuple[str, ...]:
        """The keywords of :attr:`ignored`, each once, in the Identifier's order."""
        return tuple(dict.fromkeys(key.keyword for key in self.ignored))

    def warning(self) -> str:
        """One line for the query log: which keys were ignored and why ("" if none)."""
        return "; ".join(str(key) for key in self.ignored)


def parse_identifier(
    identifier: Dataset,
    *,
    limit: int | None = None,
    match_keys: frozenset[str] = frozenset(),
    zone: dt.tzinfo | None = None,
) -> ParsedIdentifier:
    """Translate a Modality Worklist C-FIND Identifier into a :class:`WorklistQuery`.

    Parameters
    ----------
    identifier
        The C-FIND request Identifier, as pydicom decoded it.
    limit
        Upper bound on the number of matches, or ``None``.
    match_keys
        Keywords of the keys matched only on request (:attr:`KeySpec.on_request`)
        that the caller's profile turns matching on for.
    zone
        The site's zone (:mod:`mwl.timezones`): a query with Timezone Offset From
        UTC has its SPS start date-time range converted from that offset to it.

    Returns
    -------
    ParsedIdentifier

    Raises
    ------
    InvalidQueryError
        A value is malformed for its VR (a date such as ``2026-13-45``), a key that
        allows one value carries several, or the SPS Sequence holds more than one
        item (PS3.4 C.2.2.2.6); ``offending_keyword`` names the key.
    """
    builder = _Builder(match_keys)
    for elem in identifier:
        builder.add(elem, Level.TOP)
    return builder.build(limit, zone)


def query_from_identifier(identifier: Dataset, *, limit: int | None = None) -> WorklistQuery:
    """Shortcut for ``parse_identifier(identifier).query``; raises the same errors."""
    return parse_identifier(identifier, limit=limit).query


class _Builder:
    def __init__(self, match_keys: frozenset[str] = frozenset()) -> None:
        self.match_keys = match_keys
        self.keys: list[KeyMatch] = []
        self.ignored: list[IgnoredKey] = []
        self.statuses: set[SpsStatus] = set()
        self.start_date: str = ""
        self.start_time: str = ""
        self.offset: dt.timedelta | None = None
        self.asks_offset = False

    def add(self, elem: DataElement, level: Level) -> None:
        keyword = elem.keyword
        if elem.tag.is_private or elem.tag.element == 0 or not keyword or keyword in _IGNORED:
            return
        if keyword == _TIMEZONE_OFFSET and level is Level.TOP:
            self._add_offset(elem)
            return
        if elem.VR == "SQ":
            self._add_sequence(elem)
            return
        spec = keytable.spec(keyword, level)
        values = _values(elem)
        _check_lengths(keyword, elem.VR, values)
        if not values or values == ["*"]:
            return  # universal matching, C.2.2.2.3 (and a lone '*', C.2.2.2.4)
        reason = _not_matched(spec, self.match_keys)
        if reason:
            self.ignored.append(IgnoredKey(keyword, reason, tuple(values)))
            return
        assert spec is not None
        values = self._enumerated(keyword, values)
        if not values:
            return
        if spec.attribute == START:
            if keyword == "ScheduledProcedureStepStartDate":
                self.start_date = _one(values, keyword)
            else:
                self.start_time = _one(values, keyword)
            return
        if spec.attribute == STATUS:
            self._add_statuses(values)
            return
        self.keys.append(_key_match(spec, values))

    def _add_sequence(self, elem: DataElement) -> None:
        items = list(elem.value or ())
        if not items:
            return  # zero items: universal sequence matching (C.2.2.2.6)
        if elem.keyword != keytable.SPS_SEQUENCE:
            # Code and reference sequences are return keys only.
            if any(_has_value(e) for item in items for e in item):
                self.ignored.append(IgnoredKey(elem.keyword, NOT_MATCHED))
            return
        if len(items) > 1:
            raise InvalidQueryError(
                "the Scheduled Procedure Step Sequence of a query holds a single item"
                " (PS3.4 C.2.2.2.6)",
                elem.keyword,
            )
        for inner in items[0]:
            self.add(inner, Level.SPS)

    def _enumerated(self, keyword: str, values: list[str]) -> list[str]:
        """``values`` without those outside the key's enumerated values (reported).

        No stored value can be one of them, so matching on them would only empty
        the worklist: the SCU means "any" (dcmjs-dimse, for one, always sends
        Pregnancy Status 0: its API cannot leave a US element empty). A wildcard
        value is kept (the key's own matching decides).
        """
        allowed = ENUMERATED.get(keyword)
        if allowed is None:
            return values
        outside = [v for v in values if v not in allowed and not _WILDCARD.search(v)]
        if outside:
            self.ignored.append(
                IgnoredKey(keyword, NOT_ENUMERATED, tuple(outside), tuple(sorted(allowed)))
            )
        return [v for v in values if v not in outside]

    def _add_statuses(self, values: list[str]) -> None:
        known = {_ASKABLE_STATUSES[v] for v in values if v in _ASKABLE_STATUSES}
        if known:
            self.statuses |= known
        else:
            # Defined terms (PS3.3 C.4.10), not enumerated values: a term no step has
            # (HELD, the broker's own, included) is single value matching that finds
            # nothing, as PS3.4 C.2.2.2.1 says.
            self.keys.append(KeyMatch(STATUS, MatchKind.SINGLE, (values[0],)))

    def _add_offset(self, elem: DataElement) -> None:
        self.asks_offset = True
        values = _values(elem)
        if not values:
            return
        try:
            self.offset = parse_offset(_one(values, _TIMEZONE_OFFSET))
        except ValueError as exc:
            raise InvalidQueryError(f"{_TIMEZONE_OFFSET}: {exc}", _TIMEZONE_OFFSET) from None

    def build(self, limit: int | None, zone: dt.tzinfo | None = None) -> ParsedIdentifier:
        start_from, start_until = None, None
        if self.start_date:
            start_from, start_until = _combined_start(self.start_date, self.start_time)
            if self.offset is not None and zone is not None:
                # Read in the query's offset: the instants, as the site's wall time.
                start_from = from_offset(start_from, self.offset, zone) if start_from else None
                start_until = from_offset(start_until, self.offset, zone) if start_until else None
        elif self.start_time:
            low, high = _time_range(self.start_time, "ScheduledProcedureStepStartTime")
            self.keys.append(
                KeyMatch(
                    START_TIME,
                    MatchKind.RANGE,
                    low=low.strftime("%H%M%S") if low else None,
                    high=high.strftime("%H%M%S") if high else None,
                )
            )
        query = WorklistQuery(
            keys=tuple(self.keys),
            start_from=start_from,
            start_until=start_until,
            statuses=frozenset(self.statuses),
            limit=limit,
        )
        return ParsedIdentifier(query, tuple(self.ignored), self.offset, self.asks_offset)


def _not_matched(spec: KeySpec | None, match_keys: frozenset[str]) -> str:
    """Why a value of this key is not used for matching, or "" when it is."""
    if spec is None or spec.attribute is None:
        return NOT_HELD
    if not spec.matching:
        return NOT_MATCHED
    if spec.on_request and spec.keyword not in match_keys:
        return ON_REQUEST
    return ""


def _values(elem: DataElement) -> list[str]:
    """The element's values as stripped text; an empty list for a zero-length value."""
    value = elem.value
    if value is None or value == "" or value == b"":
        return []
    raw: Iterable[object] = value if elem.VM > 1 else [value]
    out = []
    for v in raw:
        text = str(v) if not isinstance(v, bytes) else v.decode("ascii", "replace")
        # Leading and trailing spaces are padding for the text VRs we match (PS3.5 6.2).
        out.append(text.strip(" \x00"))
    return [v for v in out if v] or []


def _check_lengths(keyword: str, vr: str, values: list[str]) -> None:
    """Refuse a value longer than its VR allows (PS3.5 6.2), naming the key."""
    longest = _MAX_QUERY_LENGTH.get(vr, 0)
    for value in values:
        if vr == "PN":
            parts, longest = value.split("="), _PN_GROUP_LENGTH
        else:
            parts = [value]
        for part in parts:
            if longest and len(part) > longest:
                raise InvalidQueryError(
                    f"{keyword} has a value of {len(part)} characters; VR {vr} allows {longest}",
                    keyword,
                )


def _has_value(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return any(_has_value(e) for item in elem.value or () for e in item)
    return bool(_values(elem))


def _one(values: list[str], keyword: str) -> str:
    if len(values) > 1:
        raise InvalidQueryError(f"{keyword} takes a single value", keyword)
    return values[0]


def _key_match(spec: KeySpec, values: list[str]) -> KeyMatch:
    assert spec.attribute is not None
    keyword = spec.keyword
    if spec.vr == "DA":
        low, high = _date_range(_one(values, keyword), keyword)
        return KeyMatch(
            spec.attribute,
            MatchKind.RANGE if low != high else MatchKind.SINGLE,
            values=(low.strftime("%Y%m%d"),) if low == high and low else (),
            low=low.strftime("%Y%m%d") if low else None,
            high=high.strftime("%Y%m%d") if high else None,
        )
    wildcard_ok = MatchKind.WILDCARD in spec.matching and spec.vr in WILDCARD_VRS
    if len(values) > 1:
        # List of UID (C.2.2.2.2) or multiple value matching (C.2.2.2.8).
        if spec.vr != "UI" and not spec.multiple_values:
            raise InvalidQueryError(f"{keyword} takes a single value", keyword)
        if wildcard_ok and any(_has_wildcard(v) for v in values):
            raise InvalidQueryError(
                f"{keyword}: wildcards are not supported in a list of values", keyword
            )
        return KeyMatch(spec.attribute, MatchKind.UID_LIST, tuple(values))
    value = values[0]
    if wildcard_ok and _has_wildcard(value):
        return KeyMatch(spec.attribute, MatchKind.WILDCARD, (value,))
    # Elsewhere '*' and '?' are plain characters: single value matching (C.2.2.2.1),
    # e.g. on Scheduled Station AE Title (K.6-1: single value matching only).
    return KeyMatch(spec.attribute, MatchKind.SINGLE, (value,))


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _parse_date(text: str, keyword: str) -> dt.date:
    m = _DATE.match(text)
    try:
        if m is None:
            raise ValueError(text)
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise InvalidQueryError(
            f"{keyword}: {text!r} is not a date (DA: YYYYMMDD or a range of them)", keyword
        ) from None


def _date_range(text: str, keyword: str) -> tuple[dt.date | None, dt.date | None]:
    """A DA value or range (C.2.2.2.5.1) as inclusive bounds; ``None`` is open."""
    if text.count("-") > 1:
        raise InvalidQueryError(
            f"{keyword}: {text!r} is not a date (DA: YYYYMMDD or a range of them)", keyword
        )
    if "-" not in text:
        day = _parse_date(text, keyword)
        return day, day
    low_text, high_text = (part.strip() for part in text.split("-"))
    low = _parse_date(low_text, keyword) if low_text else None
    high = _parse_date(high_text, keyword) if high_text else None
    return low, high


def _parse_time(text: str, keyword: str, upper: bool) -> dt.time:
    """A TM value as the first (or, when ``upper``, last) instant it denotes."""
    m = _TIME.match(text)
    try:
        if m is None:
            raise ValueError(text)
        hour = int(m[1])
        fill = 59 if upper else 0
        minute = int(m[2]) if m[2] else fill
        second = int(m[3]) if m[3] else fill
        if m[4]:
            micro = int(m[4].ljust(6, "9" if upper else "0"))
        else:
            micro = 999_999 if upper else 0
        return dt.time(hour, minute, min(second, 59), micro)
    except ValueError:
        raise InvalidQueryError(
            f"{keyword}: {text!r} is not a time (TM: HHMMSS or a range of them)", keyword
        ) from None


def _time_range(text: str, keyword: str) -> tuple[dt.time | None, dt.time | None]:
    """A TM value or range as inclusive bounds; a single value spans its precision."""
    if text.count("-") > 1:
        raise InvalidQueryError(
            f"{keyword}: {text!r} is not a time (TM: HHMMSS or a range of them)", keyword
        )
    if "-" not in text:
        return _parse_time(text, keyword, upper=False), _parse_time(text, keyword, upper=True)
    low_text, high_text = (part.strip() for part in text.split("-"))
    low = _parse_time(low_text, keyword, upper=False) if low_text else None
    high = _parse_time(high_text, keyword, upper=True) if high_text else None
    return low, high


def _combined_start(
    date_text: str, time_text: str
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """SPS Start Date and Time as one date-time range (PS3.4 Table K.6-1, C.2.2.2.5.1).

    ``20261121-20261123`` with ``1000-1800`` means from 10:00 on the 21st to 18:00
    on the 23rd, not 10:00-18:00 on each day.
    """
    low_day, high_day = _date_range(date_text, "ScheduledProcedureStepStartDate")
    low_time: dt.time | None = None
    high_time: dt.time | None = None
    if time_text:
        low_time, high_time = _time_range(time_text, "ScheduledProcedureStepStartTime")
    start_from = dt.datetime.combine(low_day, low_time or dt.time.min) if low_day else None
    start_until = dt.datetime.combine(high_day, high_time or dt.time.max) if high_day else None
    return start_from, start_until
