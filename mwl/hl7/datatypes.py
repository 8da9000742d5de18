"""HL7 v2 data types as DICOM values: TS/DTM, XPN/XCN/NDL to PN, CE/CWE to codes, HD, IS.

Also the value lengths of the DICOM attributes the mappings fill (PS3.5 6.2):
identifiers longer than their VR allows are refused, descriptive text is cut.
"""

from __future__ import annotations

import datetime as dt
import re

from hl7apy.utils import get_datetime_info

from mwl.domain import Code
from mwl.hl7.errors import DATA_TYPE_ERROR, Hl7MessageError
from mwl.hl7.grammar import MessageHeader, Segment, unescape
from mwl.timezones import from_offset, parse_offset

# DICOM value length limits (PS3.5 6.2) of the attributes the mapping fills.
SH, LO, CS, AE, PN = 16, 64, 16, 16, 64 * 5

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_PN_DELIMITERS = str.maketrans({"^": " ", "=": " ", "\\": " ", "\r": " ", "\n": " "})


# --------------------------------------------------------------------------- time


def parse_timestamp(value: str, location: str, zone: dt.tzinfo | None = None) -> dt.datetime | None:
    """HL7 TS/DTM (``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``) to a naive datetime.

    The broker keeps scheduled times as the site's wall-clock time
    (:mod:`mwl.timezones`): a value with an offset is an instant, converted to
    ``zone`` (the site's); one without is taken as the site's time already. Without
    ``zone`` the offset is dropped. Empty -> None.

    Raises
    ------
    Hl7MessageError
        102 at ``location`` for anything that is not a valid HL7 time stamp.
    """
    value = value.strip()
    if not value:
        return None
    try:
        moment, _fmt, offset, _precision = get_datetime_info(value)
        shift = parse_offset(offset) if offset and zone is not None else None
    except (ValueError, IndexError):
        raise Hl7MessageError(DATA_TYPE_ERROR, location, "invalid date/time") from None
    result: dt.datetime = moment.replace(tzinfo=None)
    if shift is not None and zone is not None:
        result = from_offset(result, shift, zone)
    return result


# --------------------------------------------------------------------------- names


def person_name(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    """DICOM PN from its five components, trailing empty components dropped.

    PN delimiters inside a component (an escaped ``^`` in the HL7 name) would shift
    the components: they become spaces.
    """
    parts = (p.translate(_PN_DELIMITERS).strip() for p in (family, given, middle, prefix, suffix))
    return "^".join(parts).rstrip("^")


def xpn_name(segment: Segment, position: int) -> str:
    """XPN -> PN: family(.1.1)^given(.2)^middle(.3)^prefix(.5)^suffix(.4 + degree .6)."""
    reps = segment.repetitions(position)
    if not reps:
        return ""
    rep = reps[0]
    suffix = " ".join(s for s in (segment.part(rep, 4), segment.part(rep, 6)) if s)
    return person_name(
        segment.part(rep, 1),
        segment.part(rep, 2),
        segment.part(rep, 3),
        segment.part(rep, 5),
        suffix,
    )


def xcn_name(segment: Segment, position: int) -> str:
    """XCN -> PN: family(.2)^given(.3)^middle(.4)^prefix(.6)^suffix(.5 + degree .7)."""
    reps = segment.repetitions(position)
    if not reps:
        return ""
    rep = reps[0]
    suffix = " ".join(s for s in (segment.part(rep, 5), segment.part(rep, 7)) if s)
    name = person_name(
        segment.part(rep, 2),
        segment.part(rep, 3),
        segment.part(rep, 4),
        segment.part(rep, 6),
        suffix,
    )
    # Some RIS send only a name in component 1 (no ID): keep it rather than lose it.
    return name or segment.part(rep, 1)


def ndl_name(segment: Segment, position: int) -> str:
    """NDL -> PN (OBR-34; CNN in subcomponents: ID&family&given&middle&suffix&prefix&degree)."""
    reps = segment.repetitions(position)
    if not reps:
        return ""
    rep = reps[0]
    first = rep.split(segment.delimiters.component)[0]
    if segment.delimiters.subcomponent in first:
        suffix = " ".join(s for s in (segment.part(rep, 1, 5), segment.part(rep, 1, 7)) if s)
        return person_name(
            segment.part(rep, 1, 2),
            segment.part(rep, 1, 3),
            segment.part(rep, 1, 4),
            segment.part(rep, 1, 6),
            suffix,
        )
    # Senders that put an XCN here.
    return xcn_name(segment, position)


# --------------------------------------------------------------------------- codes


def coded(
    segment: Segment, position: int, components: tuple[int, int, int] = (1, 2, 3)
) -> Code | None:
    """CE/CWE triplet -> Code(value, scheme, meaning); None when the value is empty."""
    value, meaning, scheme = (segment.get(position, c) for c in components)
    if not value:
        return None
    return Code(value=value, scheme=scheme, meaning=meaning)


def coded_text(segment: Segment, position: int, repetition: int = 0) -> str:
    """A CE/CWE as words: its text (.2), else its identifier (.1)."""
    return segment.get(position, 2, repetition=repetition) or segment.get(
        position, 1, repetition=repetition
    )


def checked_code(code: Code | None, location: str) -> Code | None:
    """A code whose value (LO) and scheme (SH) fit; the meaning is cut to LO."""
    if code is None:
        return None
    return Code(
        value=identifier(code.value, LO, location),
        scheme=identifier(code.scheme, SH, location),
        meaning=truncated(code.meaning, LO),
    )


def administrative_sex(value: str) -> str:
    """HL7 table 0001 -> Patient's Sex (M, F, O; ambiguous and not applicable -> O)."""
    value = value.upper()
    if value in {"F", "M", "O"}:
        return value
    if value in {"A", "N"}:
        return "O"
    return ""


def namespace_id(value: str, header: MessageHeader) -> str:
    """HD namespace ID (first component), unescaped."""
    return unescape(value.split(header.encoding_characters[0])[0]).strip()


# --------------------------------------------------------------------------- lengths


def identifier(value: str, limit: int, location: str) -> str:
    """An identifier longer than its VR allows is refused: cutting it could merge orders."""
    if len(value) > limit:
        raise Hl7MessageError(DATA_TYPE_ERROR, location, f"longer than {limit} characters")
    return value


def truncated(value: str, limit: int) -> str:
    """Descriptive text is cut to its VR's length (dcm4chee does the same)."""
    return value[:limit]


def lo_text(value: str) -> str:
    """Text for a single-valued LO: a backslash would split it (PS3.5 6.2), line breaks
    are not allowed; cut to 64 characters like the other descriptions."""
    return " ".join(value.replace("\\", "/").split())[:LO]


def dicom_uid(value: str, location: str) -> str:
    """A UID (PS3.5 9.1), or empty; anything else is refused."""
    if value and (len(value) > 64 or not _UID.fullmatch(value)):
        raise Hl7MessageError(DATA_TYPE_ERROR, location, "not a valid DICOM UID")
    return value
