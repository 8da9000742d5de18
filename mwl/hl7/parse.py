"""HL7 v2 messages to domain terms: ORM^O01 / OMI^O23 to ``Order``, ADT to patient changes.

Only the segments and fields the mapping reads are looked at (docs/hl7-interface.md,
HL7-MAPPING.md). The message is split on its own delimiters (MSH-1, MSH-2) before any
escape sequence is decoded, so ``\\S\\`` inside a name never splits a component.
Lenient on input: unknown segments are ignored, optional fields may be empty; a
field that is present but wrong (bad date, bad UID) is an error naming the field.
"""

from __future__ import annotations

import codecs
import datetime as dt
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hl7apy.utils import get_datetime_info

from mwl.config import Hl7StationRule, Settings
from mwl.domain import Code, Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.errors import MwlError
from mwl.orders.patients import PatientChange, PatientMessage

logger = logging.getLogger(__name__)

# HL7 table 0357 (message error condition codes) as used in ERR.
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION_ID = 203
APPLICATION_INTERNAL_ERROR = 207

ERROR_TEXTS: Mapping[int, str] = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}

SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})
# Message type (MSH-9.1) -> accepted trigger events (MSH-9.2).
SUPPORTED_EVENTS: Mapping[str, frozenset[str]] = {
    "ORM": frozenset({"O01"}),
    "OMI": frozenset({"O23"}),
    "ADT": frozenset({"A08", "A31", "A40", "A47"}),
}
# ADT trigger event -> patient change (HL7 v2.5.1 ch. 3).
ADT_CHANGES: Mapping[str, PatientChange] = {
    "A08": PatientChange.UPDATE,  # update patient information
    "A31": PatientChange.UPDATE,  # update person information
    "A40": PatientChange.MERGE,  # merge patient - patient identifier list
    "A47": PatientChange.CHANGE_ID,  # change patient identifier list
}

# HL7 table 0211 (alternate character sets, MSH-18) -> Python codec. The list of
# dcm4che's HL7Charset plus the labels RIS send in practice; any other label that
# Python knows as a codec name ("UTF-8", "windows-1252") is accepted as well.
HL7_CHARSETS: Mapping[str, str] = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    # Table 0211 leaves the encoding of "UNICODE" open; MSH must stay readable
    # byte-wise, so only UTF-8 can be meant on an MLLP link.
    "UNICODE": "utf-8",
    "ISO IR14": "shift_jis",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}

# ORC-7.6 / TQ1-9 priority (HL7 table 0027) -> Requested Procedure Priority (0040,1003).
PRIORITIES: Mapping[str, str] = {
    "S": "STAT",
    "A": "HIGH",
    "P": "HIGH",
    "C": "HIGH",
    "R": "ROUTINE",
    "T": "MEDIUM",
}

# DICOM value length limits (PS3.5 6.2) of the attributes the mapping fills.
SH, LO, CS, AE, PN = 16, 64, 16, 16, 64 * 5

# Allergies (0010,2110) is LO with several values: the column holds this many characters.
ALLERGIES_LENGTH = 1024
# OBX-3 naming the patient's weight or height: OBX-3.2 as HL7-MAPPING.md has it, or
# the LOINC code in OBX-3.1 (29463-7 body weight, 3141-9 measured, 8302-2 height).
_WEIGHT_NAMES = frozenset({"BODY WEIGHT", "29463-7", "3141-9"})
_HEIGHT_NAMES = frozenset({"BODY HEIGHT", "8302-2"})
# OBX-6 unit -> factor to kilograms (weight) or metres (height, Patient's Size).
_WEIGHT_UNITS: Mapping[str, float] = {"KG": 1.0, "G": 0.001}
_HEIGHT_UNITS: Mapping[str, float] = {"M": 1.0, "CM": 0.01}
# PV1-15 ambulatory status (HL7 table 0009) B6 = pregnant -> Pregnancy Status 3 (PS3.3).
_PREGNANT = "B6"
PREGNANCY_STATUS_PREGNANT = "3"

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DIGITS8 = re.compile(r"[0-9]{8}")


class Hl7MessageError(MwlError):
    """A message that cannot be accepted, with what the ERR segment must say.

    Parameters
    ----------
    code
        HL7 table 0357 error condition code (100 ... 207).
    location
        The field at fault as ``SEG-n`` or ``SEG-n.c`` (``ORC-1``, ``OBR-27.4``), or a
        segment name, or empty.
    text
        Human-readable reason; contains no patient data.
    ack_code
        ``AE`` or ``AR``; by default AE for 1xx codes (the sender may correct and
        resend) and AR for 2xx (the message will never be accepted), as dcm4che does.
    """

    def __init__(self, code: int, location: str, text: str, ack_code: str | None = None) -> None:
        self.code = code
        self.location = location
        self.text = text
        self.ack_code = ack_code or ("AE" if code < 200 else "AR")
        super().__init__(f"{code} at {location or '-'}: {text}")


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields the broker needs before (and even without) parsing the rest."""

    field_separator: str
    encoding_characters: str
    sending_application: str  # MSH-3, as sent (components kept)
    sending_facility: str  # MSH-4
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    message_type: str  # MSH-9.1
    trigger_event: str  # MSH-9.2
    message_control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version_id: str  # MSH-12.1
    charset: str  # MSH-18 (first repetition), as sent
    codec: str  # Python codec used to decode the message

    @property
    def message_code(self) -> str:
        """``ORM^O01`` style: MSH-9.1 and MSH-9.2."""
        return (
            f"{self.message_type}^{self.trigger_event}" if self.trigger_event else self.message_type
        )


@dataclass(frozen=True)
class MappingOptions:
    """Site choices of the default mapping (from :class:`mwl.config.Settings`).

    Parameters
    ----------
    default_charset
        HL7 charset label for messages without MSH-18.
    protocol_code_components
        Components of OBR-4 with the Scheduled Protocol Code: ``(4, 5, 6)`` (dcm4chee's
        default ``OBR_4_4``) or ``(1, 2, 3)``.
    modality_map
        Sent modality value -> DICOM modality (``MRI`` -> ``MR``); others kept.
    station_rules
        Rules that pick the Scheduled Station AE title and name for a step without one.
    """

    default_charset: str = "8859/1"
    protocol_code_components: tuple[int, int, int] = (4, 5, 6)
    modality_map: Mapping[str, str] = field(default_factory=dict)
    station_rules: Sequence[Hl7StationRule] = ()
    station_from_orc18: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> MappingOptions:
        """The mapping options a :class:`~mwl.config.Settings` asks for."""
        first = settings.hl7_protocol_code_component
        return cls(
            default_charset=settings.hl7_default_charset,
            protocol_code_components=(first, first + 1, first + 2),
            modality_map=dict(settings.hl7_modality_map),
            station_rules=settings.hl7_station_rules,
            station_from_orc18=settings.hl7_station_from_orc18,
        )


# --------------------------------------------------------------------------- decoding


def codec_for(label: str) -> str:
    """Python codec for an HL7 character set label (MSH-18, table 0211).

    Raises
    ------
    Hl7MessageError
        103 at MSH-18 when the label is neither in table 0211 nor a Python codec.
    """
    name = HL7_CHARSETS.get(label.strip().upper())
    if name is None:
        try:
            name = codecs.lookup(label.strip()).name
        except (LookupError, ValueError):  # ValueError: a NUL in the label
            raise Hl7MessageError(
                TABLE_VALUE_NOT_FOUND, "MSH-18", f"unknown character set {label.strip()!r}"
            ) from None
    return name


def _header_fields(raw: bytes) -> tuple[str, list[str]]:
    """MSH fields (as ``latin-1`` text, so indices are bytes) of the first segment."""
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 8:
        raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "MSH", "the message has no MSH segment", "AR")
    raw = raw[start:]
    end = len(raw)
    for terminator in (b"\r", b"\n"):
        found = raw.find(terminator)
        if 0 <= found < end:
            end = found
    text = raw[:end].decode("latin-1")
    if len(text) < 8:
        raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "MSH", "the MSH segment is incomplete", "AR")
    separator = text[3]
    if separator.isalnum() or separator in " \r\n":
        raise Hl7MessageError(DATA_TYPE_ERROR, "MSH-1", "invalid field separator")
    return separator, text.split(separator)


def read_header(raw: bytes, default_charset: str = "8859/1") -> MessageHeader:
    """Read MSH from a frame without decoding the rest.

    Every supported character set leaves MSH readable byte-wise (ASCII delimiters), so
    this works before the charset is known and even when the body is broken: the
    listener needs MSH-3/4/10 to log and acknowledge any message.

    Parameters
    ----------
    raw
        One frame payload.
    default_charset
        HL7 label used when MSH-18 is empty.

    Raises
    ------
    Hl7MessageError
        100 when there is no MSH segment; 103 for an unknown MSH-18.
    """
    separator, fields = _header_fields(raw)
    fields += [""] * (19 - len(fields))
    encoding = fields[1] if len(fields[1]) >= 3 else "^~\\&"
    component, repetition = encoding[0], encoding[1]

    def msh(n: int) -> str:
        # fields[0] is "MSH", fields[1] is MSH-2: MSH-n is fields[n - 1].
        return fields[n - 1]

    def first(value: str) -> str:
        return value.split(repetition)[0]

    charset = first(msh(18)).split(component)[0].strip()
    codec = codec_for(charset or default_charset)
    # Split as Latin-1 (one character per byte); the values are text in the
    # message's own charset.
    fields = [
        value.encode("latin-1").decode(codec, errors="replace").translate(_CONTROLS)
        for value in fields
    ]
    message_type = first(msh(9)).split(component)
    message_type += ["", ""]
    return MessageHeader(
        field_separator=separator,
        encoding_characters=encoding[:4],
        sending_application=first(msh(3)),
        sending_facility=first(msh(4)),
        receiving_application=first(msh(5)),
        receiving_facility=first(msh(6)),
        message_type=message_type[0].strip().upper(),
        trigger_event=message_type[1].strip().upper(),
        message_control_id=msh(10).strip(),
        processing_id=msh(11).split(component)[0].strip(),
        version_id=first(msh(12)).split(component)[0].strip(),
        charset=charset,
        codec=codec,
    )


def safe_header(raw: bytes, default_charset: str = "8859/1") -> MessageHeader | None:
    """:func:`read_header`, or None when MSH is missing; an unknown MSH-18 falls back.

    For logging and for acknowledging messages that :func:`parse_order` rejects.
    """
    try:
        return read_header(raw, default_charset)
    except Hl7MessageError as exc:
        if exc.location != "MSH-18":
            return None
    # Unknown MSH-18: still answer, in the default charset.
    separator, fields = _header_fields(raw)
    patched = separator.join(fields[:17]).encode("latin-1")
    try:
        header = read_header(patched, default_charset)
    except Hl7MessageError:
        return None
    fields += [""] * (19 - len(fields))
    charset = fields[17].split("~")[0].translate(_CONTROLS)
    return MessageHeader(**{**header.__dict__, "charset": charset})


# --------------------------------------------------------------------------- structure


class Segment:
    """One segment split into fields; values are read with :meth:`get` (unescaped)."""

    __slots__ = ("name", "fields", "_delimiters", "_codec")

    def __init__(self, name: str, fields: list[str], delimiters: _Delimiters, codec: str) -> None:
        self.name = name
        self.fields = fields  # fields[n] is SEG-n, MSH included (fields[1] = MSH-1)
        self._delimiters = delimiters
        self._codec = codec

    def raw(self, position: int) -> str:
        """SEG-n as sent (escapes and delimiters kept)."""
        return self.fields[position] if position < len(self.fields) else ""

    def repetitions(self, position: int) -> list[str]:
        """SEG-n split into repetitions, still escaped."""
        value = self.raw(position)
        return value.split(self._delimiters.repetition) if value else []

    def get(
        self, position: int, component: int = 1, subcomponent: int = 1, repetition: int = 0
    ) -> str:
        """SEG-n.c.s of repetition ``repetition``, unescaped and stripped; "" when absent."""
        reps = self.repetitions(position)
        if repetition >= len(reps):
            return ""
        return self.part(reps[repetition], component, subcomponent)

    def part(self, value: str, component: int = 1, subcomponent: int = 1) -> str:
        """Component/subcomponent of one escaped repetition, unescaped."""
        d = self._delimiters
        components = value.split(d.component)
        if component > len(components):
            return ""
        subs = components[component - 1].split(d.subcomponent)
        if subcomponent > len(subs):
            return ""
        return unescape(subs[subcomponent - 1], d, self._codec).translate(_CONTROLS).strip()

    def components(self, position: int, repetition: int = 0) -> list[str]:
        """Unescaped components (first subcomponent each) of SEG-n."""
        reps = self.repetitions(position)
        if repetition >= len(reps):
            return []
        count = reps[repetition].count(self._delimiters.component) + 1
        return [self.part(reps[repetition], c) for c in range(1, count + 1)]


@dataclass(frozen=True)
class _Delimiters:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


_FORMATTING = {".br": "\r\n", "H": "", "N": ""}
# C0 controls other than TAB, LF, CR have no place in a DICOM value (PS3.5 6.1.3)
# and PostgreSQL refuses NUL in text: they are dropped from every value read.
_CONTROLS = dict.fromkeys(c for c in range(32) if c not in (9, 10, 13))


def unescape(value: str, delimiters: _Delimiters | None = None, codec: str = "iso8859-1") -> str:
    """Decode HL7 escape sequences (HL7 v2.5.1 2.7).

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` become the delimiters, ``\\Xhh..\\`` the bytes
    ``hh..`` in the message's charset, ``\\.br\\`` a line break (CR LF, as DICOM text
    has it). Highlighting (``\\H\\``, ``\\N\\``), other formatting commands and
    character set switches (``\\C..\\``, ``\\M..\\``, which dcm4che does not support
    either) are dropped; an unterminated escape is kept as text (lenient on input).
    """
    d = delimiters or _DEFAULT_DELIMITERS
    esc = d.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    pos = 0
    while True:
        start = value.find(esc, pos)
        if start < 0:
            out.append(value[pos:])
            break
        end = value.find(esc, start + 1)
        if end < 0:
            out.append(value[pos:])
            break
        out.append(value[pos:start])
        sequence = value[start + 1 : end]
        pos = end + 1
        simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": esc}
        if sequence in simple:
            out.append(simple[sequence])
        elif sequence[:1] == "X" and re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", sequence[1:]):
            out.append(bytes.fromhex(sequence[1:]).decode(codec, errors="replace"))
        elif sequence in _FORMATTING:
            out.append(_FORMATTING[sequence])
        elif sequence[:1] in {".", "C", "M", "Z"}:
            continue
        else:
            out.append(value[start : end + 1])
    return "".join(out)


_DEFAULT_DELIMITERS = _Delimiters("|", "^", "~", "\\", "&")


def split_segments(raw: bytes, header: MessageHeader) -> list[Segment]:
    """Decode ``raw`` with the header's codec and split it into segments.

    Segments are separated by CR; LF and CR LF are accepted too (files edited on
    other systems). Empty lines are skipped.

    Raises
    ------
    Hl7MessageError
        102 at MSH-18 when the bytes are not valid in the message's charset.
    """
    try:
        text = raw.decode(header.codec)
    except UnicodeDecodeError as exc:
        raise Hl7MessageError(
            DATA_TYPE_ERROR,
            "MSH-18",
            f"message is not valid {header.charset or 'in the default character set'}"
            f" ({header.codec}) at byte {exc.start}",
        ) from None
    if not header.charset:
        logger.debug("fallback: MSH-18 empty, message read in the default character set")
    enc = (header.encoding_characters + "^~\\&"[len(header.encoding_characters) :])[:4]
    delimiters = _Delimiters(header.field_separator, enc[0], enc[1], enc[2], enc[3])
    segments: list[Segment] = []
    start = text.find("MSH")
    for line in re.split(r"\r\n|\r|\n", text[start:]):
        line = line.strip("\x00\x0b\x1c ")
        if not line:
            continue
        name = line[:3].upper()
        if name == "MSH":
            # MSH-1 is the separator itself: keep field numbers equal to HL7's.
            fields = ["MSH", header.field_separator] + line[4:].split(header.field_separator)
        else:
            fields = line.split(header.field_separator)
        segments.append(Segment(name, fields, delimiters, header.codec))
    return segments


# --------------------------------------------------------------------------- values


def parse_timestamp(value: str, location: str) -> dt.datetime | None:
    """HL7 TS/DTM (``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``) to a naive datetime.

    The offset is dropped: the broker schedules in the department's local time, which
    is what the RIS sends. Empty -> None.

    Raises
    ------
    Hl7MessageError
        102 at ``location`` for anything that is not a valid HL7 time stamp.
    """
    value = value.strip()
    if not value:
        return None
    try:
        moment, _fmt, _offset, _precision = get_datetime_info(value)
    except (ValueError, IndexError):
        raise Hl7MessageError(DATA_TYPE_ERROR, location, "invalid date/time") from None
    result: dt.datetime = moment.replace(tzinfo=None)
    return result


def person_name(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    """DICOM PN from its five components, trailing empty components dropped.

    PN delimiters inside a component (an escaped ``^`` in the HL7 name) would shift
    the components: they become spaces.
    """
    parts = (p.translate(_PN_DELIMITERS).strip() for p in (family, given, middle, prefix, suffix))
    return "^".join(parts).rstrip("^")


_PN_DELIMITERS = str.maketrans({"^": " ", "=": " ", "\\": " ", "\r": " ", "\n": " "})


def _xpn(segment: Segment, position: int) -> str:
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


def _xcn(segment: Segment, position: int) -> str:
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


def _technician(segment: Segment, position: int) -> str:
    """OBR-34 (NDL; CNN in subcomponents: ID&family&given&middle&suffix&prefix&degree)."""
    reps = segment.repetitions(position)
    if not reps:
        return ""
    rep = reps[0]
    first = rep.split(segment._delimiters.component)[0]
    if segment._delimiters.subcomponent in first:
        suffix = " ".join(s for s in (segment.part(rep, 1, 5), segment.part(rep, 1, 7)) if s)
        return person_name(
            segment.part(rep, 1, 2),
            segment.part(rep, 1, 3),
            segment.part(rep, 1, 4),
            segment.part(rep, 1, 6),
            suffix,
        )
    # Senders that put an XCN here.
    return _xcn(segment, position)


def _code(
    segment: Segment, position: int, components: tuple[int, int, int] = (1, 2, 3)
) -> Code | None:
    """CE/CWE triplet -> Code(value, scheme, meaning); None when the value is empty."""
    value, meaning, scheme = (segment.get(position, c) for c in components)
    if not value:
        return None
    return Code(value=value, scheme=scheme, meaning=meaning)


def _sex(value: str) -> str:
    value = value.upper()
    if value in {"F", "M", "O"}:
        return value
    if value in {"A", "N"}:
        return "O"
    return ""


# --------------------------------------------------------------------------- mapping


@dataclass
class _Group:
    """One ORC with the segments that follow it up to the next ORC."""

    orc: Segment
    obr: Segment | None = None
    tq1: Segment | None = None
    zds: Segment | None = None
    ipcs: list[Segment] = field(default_factory=list)
    # NTE right after the OBR (order notes, before any OBX) and the OBX of the order.
    notes: list[Segment] = field(default_factory=list)
    observations: list[Segment] = field(default_factory=list)


def check_supported(header: MessageHeader) -> None:
    """Reject what the broker does not handle: message type, event, version.

    Raises
    ------
    Hl7MessageError
        200 / 201 / 203 (all answered AR), 101 for an empty MSH-9 or MSH-10.
    """
    if not header.message_type:
        raise Hl7MessageError(REQUIRED_FIELD_MISSING, "MSH-9", "message type is empty", "AR")
    events = SUPPORTED_EVENTS.get(header.message_type)
    if events is None:
        raise Hl7MessageError(
            UNSUPPORTED_MESSAGE_TYPE,
            "MSH-9",
            f"message type {header.message_type} is not supported",
        )
    if header.trigger_event not in events:
        raise Hl7MessageError(
            UNSUPPORTED_EVENT_CODE,
            "MSH-9.2",
            f"event {header.message_type}^{header.trigger_event or '(empty)'} is not supported",
        )
    if header.version_id not in SUPPORTED_VERSIONS:
        raise Hl7MessageError(
            UNSUPPORTED_VERSION_ID,
            "MSH-12",
            f"version {header.version_id or '(empty)'} is not supported"
            f" (supported: {', '.join(sorted(SUPPORTED_VERSIONS))})",
        )
    if not header.message_control_id:
        raise Hl7MessageError(REQUIRED_FIELD_MISSING, "MSH-10", "message control ID is empty")


def parse_message(
    raw: bytes, options: MappingOptions | None = None
) -> Order | tuple[PatientMessage, ...]:
    """Map one supported frame to domain terms: an order, or patient changes (ADT).

    Raises
    ------
    Hl7MessageError
        As :func:`parse_order`.
    """
    options = options or MappingOptions()
    header = read_header(raw, options.default_charset)
    check_supported(header)
    segments = split_segments(raw, header)
    if header.message_type == "ADT":
        return map_patient_messages(header, segments)
    return map_order(header, segments, options)


def map_patient_messages(
    header: MessageHeader, segments: list[Segment]
) -> tuple[PatientMessage, ...]:
    """ADT^A08/A31 (PID) and ADT^A40/A47 (PID with MRG, possibly repeated) to changes."""
    change = ADT_CHANGES[header.trigger_event]
    messages: list[PatientMessage] = []
    pid: Segment | None = None
    pv1: Segment | None = None
    allergies: list[Segment] = []
    for segment in segments:
        if segment.name == "PID":
            if change is PatientChange.UPDATE and pid is not None:
                break  # one patient per update message (A08/A31)
            pid = segment
        elif segment.name == "PV1" and pid is not None and pv1 is None:
            pv1 = segment
        elif segment.name == "AL1" and pid is not None:
            allergies.append(segment)
        elif segment.name == "MRG" and change is not PatientChange.UPDATE:
            if pid is None:
                raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "PID", "MRG without a PID before it")
            prior_id = _identifier(segment.get(1, 1), LO, "MRG-1")
            if not prior_id:
                raise Hl7MessageError(REQUIRED_FIELD_MISSING, "MRG-1", "prior patient ID is empty")
            messages.append(
                PatientMessage(
                    change, _patient(pid), prior_id, _identifier(segment.get(1, 4), LO, "MRG-1.4")
                )
            )
    if change is PatientChange.UPDATE and pid is not None:
        # A08/A31 carry the visit (PV1) and allergies (AL1) as well: they update them.
        messages.append(
            PatientMessage(change, _patient(pid, pv1, allergies, has_visit=pv1 is not None))
        )
    if not messages:
        missing = "PID" if change is PatientChange.UPDATE or pid is None else "MRG"
        raise Hl7MessageError(
            SEGMENT_SEQUENCE_ERROR, missing, f"the message has no {missing} segment"
        )
    return tuple(messages)


def parse_order(raw: bytes, options: MappingOptions | None = None) -> Order:
    """Map one ORM^O01 or OMI^O23 frame to a domain :class:`~mwl.domain.Order`.

    Parameters
    ----------
    raw
        The frame payload as received.
    options
        Site choices; defaults follow HL7-MAPPING.md.

    Returns
    -------
    Order
        One requested procedure per ORC/OBR group (ORM) or per distinct IPC-1/2/3
        (OMI), with their scheduled steps.

    Raises
    ------
    Hl7MessageError
        For anything the sender must fix (AE) or that the broker never accepts (AR).
    """
    result = parse_message(raw, options)
    if not isinstance(result, Order):
        raise Hl7MessageError(UNSUPPORTED_MESSAGE_TYPE, "MSH-9", "not an order message")
    return result


def map_order(header: MessageHeader, segments: list[Segment], options: MappingOptions) -> Order:
    """The mapping proper, on already split segments (see :func:`parse_order`)."""
    pid: Segment | None = None
    pv1: Segment | None = None
    allergies: list[Segment] = []
    groups: list[_Group] = []
    for segment in segments:
        name = segment.name
        if name == "PID" and pid is None:
            pid = segment
        elif name == "PV1" and pv1 is None:
            pv1 = segment
        elif name == "AL1" and not groups:
            allergies.append(segment)
        elif name == "ORC":
            groups.append(_Group(orc=segment))
        elif groups:
            group = groups[-1]
            if name == "OBR":
                if group.obr is not None:
                    # An OBR without its own ORC (allowed in ORM): it shares the ORC.
                    groups.append(_Group(orc=group.orc))
                    group = groups[-1]
                group.obr = segment
            elif name == "TQ1" and group.tq1 is None:
                group.tq1 = segment
            elif name == "ZDS" and group.zds is None:
                group.zds = segment
            elif name == "IPC":
                group.ipcs.append(segment)
            elif name == "OBX" and group.obr is not None:
                group.observations.append(segment)
            elif name == "NTE" and group.obr is not None and not group.observations:
                # An NTE after an OBX comments on that observation, not on the order.
                group.notes.append(segment)
    if pid is None:
        raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "PID", "the message has no PID segment")
    if not groups:
        raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "ORC", "the message has no ORC segment")
    patient = _patient(pid, pv1, allergies, has_visit=pv1 is not None)

    order_control = groups[0].orc.get(1).upper()
    order_status = groups[0].orc.get(5).upper()
    if not order_control:
        raise Hl7MessageError(REQUIRED_FIELD_MISSING, "ORC-1", "order control is empty")
    for group in groups[1:]:
        if (group.orc.get(1).upper(), group.orc.get(5).upper()) != (order_control, order_status):
            # One message, one status change: a mix would half-apply on error.
            raise Hl7MessageError(
                TABLE_VALUE_NOT_FOUND,
                "ORC-1",
                "all ORC segments of one message must have the same ORC-1 and ORC-5",
            )

    referring = _text(_xcn(pv1, 8), PN) if pv1 is not None else ""
    procedures: list[RequestedProcedure] = []
    for group in groups:
        if group.obr is None:
            raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "OBR", "an ORC has no OBR segment")
        procedures.extend(_procedures(header, group, referring, options))
    return Order(
        order_control=order_control,
        order_status=order_status,
        patient=patient,
        procedures=tuple(procedures),
        sending_application=_hd(header.sending_application, header),
        sending_facility=_hd(header.sending_facility, header),
        # Where the sender should have put a start it left out: TQ1-7 in the v2.5
        # style (a TQ1 segment), else ORC-7.4 (TQ in ORC, v2.3.1).
        start_location=(
            "TQ1-7"
            if any(g.tq1 is not None for g in groups) or header.version_id in {"2.5", "2.5.1"}
            else "ORC-7.4"
        ),
    )


def _hd(value: str, header: MessageHeader) -> str:
    """HD namespace ID (first component), unescaped."""
    return unescape(value.split(header.encoding_characters[0])[0]).strip()


def _patient(
    pid: Segment,
    pv1: Segment | None = None,
    allergies: Sequence[Segment] = (),
    *,
    has_visit: bool = False,
) -> PatientDemographics:
    """PID (with PV1 and AL1 when the message has them) -> demographics.

    With ``has_visit`` false the visit values stay ``None`` (not carried: the stored
    ones are kept), except an Admission ID from PID-18. Allergies are ``None`` when
    the message has no AL1 segment.
    """
    patient_id = pid.get(3, 1)
    if not patient_id:
        raise Hl7MessageError(REQUIRED_FIELD_MISSING, "PID-3", "patient ID is empty")
    birth = pid.get(7)[:8]
    if birth and not _DIGITS8.fullmatch(birth):
        # Partial or malformed dates cannot become a DICOM DA; dropping one loses
        # nothing a modality could use, rejecting the order would stop the exam.
        logger.info("PID-7 is not a full date; Patient's Birth Date left empty")
        birth = ""
    return PatientDemographics(
        patient_id=_identifier(patient_id, LO, "PID-3"),
        issuer_of_patient_id=_identifier(pid.get(3, 4), LO, "PID-3.4"),
        patient_name=_text(_xpn(pid, 5), PN),
        patient_birth_date=birth,
        patient_sex=_sex(pid.get(8)),
        admission_id=_admission_id(pid, pv1, has_visit),
        current_patient_location=_location(pv1) if has_visit and pv1 is not None else None,
        pregnancy_status=_pregnancy(pv1) if has_visit and pv1 is not None else None,
        allergies=_allergies(allergies) if allergies else None,
    )


def _admission_id(pid: Segment, pv1: Segment | None, has_visit: bool) -> str | None:
    """Admission ID: PV1-19.1 (visit number), else PID-18.1 (account number)."""
    visit = pv1.get(19, 1) if pv1 is not None else ""
    if visit:
        return _identifier(visit, LO, "PV1-19")
    account = pid.get(18, 1)
    if account:
        logger.debug("fallback: Admission ID from PID-18 (PV1-19 empty)")
        return _identifier(account, LO, "PID-18")
    return "" if has_visit else None


def _location(pv1: Segment) -> str:
    """PV1-3 (PL: point of care ^ room ^ bed) as readable text: ``RAD, room 12, bed 3``."""
    point, room, bed = (pv1.get(3, c) for c in (1, 2, 3))
    parts = [point] if point else []
    parts += [f"room {room}"] if room else []
    parts += [f"bed {bed}"] if bed else []
    return _lo(", ".join(parts))


def _pregnancy(pv1: Segment) -> str:
    """PV1-15 (ambulatory status, repeating): ``B6`` (pregnant) -> 3, else unknown."""
    statuses = {pv1.get(15, 1, repetition=r).upper() for r in range(len(pv1.repetitions(15)))}
    return PREGNANCY_STATUS_PREGNANT if _PREGNANT in statuses else ""


def _allergies(segments: Sequence[Segment]) -> str:
    """AL1-3 (allergen, CE: text .2, else code .1) of every AL1, as LO values."""
    values: list[str] = []
    for segment in segments:
        value = _lo(_ce_text(segment, 3))
        if value and value not in values:
            values.append(value)
    text = ""
    for value in values:
        # Whole values only: a cut value would name a different allergen.
        candidate = f"{text}\\{value}" if text else value
        if len(candidate) > ALLERGIES_LENGTH:
            break
        text = candidate
    return text


def _lo(value: str) -> str:
    """Text for a single-valued LO: a backslash would split it (PS3.5 6.2), line breaks
    are not allowed; cut to 64 characters like the other descriptions."""
    return " ".join(value.replace("\\", "/").split())[:LO]


def _ce_text(segment: Segment, position: int, repetition: int = 0) -> str:
    """A CE/CWE as words: its text (.2), else its identifier (.1)."""
    return segment.get(position, 2, repetition=repetition) or segment.get(
        position, 1, repetition=repetition
    )


def _first(candidates: Sequence[tuple[str, str]], target: str) -> str:
    """The first non-empty value; taking a later field is logged (field names only)."""
    for index, (value, location) in enumerate(candidates):
        if value:
            if index:
                logger.debug("fallback: %s from %s (%s empty)", target, location, candidates[0][1])
            return value
    return ""


def _comments(notes: Sequence[Segment]) -> str:
    """Requested Procedure Comments (LT): NTE-3 of the order's NTE segments, line by line."""
    lines = [note.get(3, repetition=r) for note in notes for r in range(len(note.repetitions(3)))]
    # LT allows CR LF and 10240 characters (PS3.5 6.2).
    return "\r\n".join(line for line in lines if line)[:10240]


def _measurement(
    observations: Sequence[Segment], names: frozenset[str], units: Mapping[str, float], what: str
) -> str:
    """Patient's Weight or Size (DS) from the first OBX that names it with a known unit."""
    for obx in observations:
        if obx.get(3, 2).upper() not in names and obx.get(3, 1).upper() not in names:
            continue
        factor = units.get(obx.get(6, 1).upper())
        if factor is None:
            logger.debug("OBX-6 unit of the %s is not one of %s; not used", what, sorted(units))
            continue
        try:
            number = float(obx.get(5, 1)) * factor
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            # Lenient on input: a wrong measurement loses a Type 2 value, not the order.
            logger.info("OBX-5 of the %s is not a positive number; left empty", what)
            continue
        if factor != 1.0:
            logger.debug("%s converted from OBX-6 %s", what, obx.get(6, 1))
        # DS holds 16 characters; six significant digits are more than scales give.
        return f"{number:.6g}"
    return ""


def _identifier(value: str, limit: int, location: str) -> str:
    """An identifier longer than its VR allows is refused: cutting it could merge orders."""
    if len(value) > limit:
        raise Hl7MessageError(DATA_TYPE_ERROR, location, f"longer than {limit} characters")
    return value


def _text(value: str, limit: int) -> str:
    """Descriptive text is cut to its VR's length (dcm4chee does the same)."""
    return value[:limit]


def _uid(value: str, location: str) -> str:
    if value and (len(value) > 64 or not _UID.fullmatch(value)):
        raise Hl7MessageError(DATA_TYPE_ERROR, location, "not a valid DICOM UID")
    return value


def _start(group: _Group) -> dt.datetime | None:
    """TQ1-7, else ORC-7.4, else OBR-27.4 (first non-empty; HL7-MAPPING §1)."""
    candidates: list[tuple[str, str]] = []
    if group.tq1 is not None:
        candidates.append((group.tq1.get(7, 1), "TQ1-7"))
    candidates.append((group.orc.get(7, 4), "ORC-7.4"))
    if group.obr is not None:
        candidates.append((group.obr.get(27, 4), "OBR-27.4"))
    for index, (value, location) in enumerate(candidates):
        if value:
            if index:
                logger.debug("fallback: step start from %s (%s empty)", location, candidates[0][1])
            return parse_timestamp(value, location)
    return None


def _priority(group: _Group) -> str:
    values = []
    if group.tq1 is not None:
        values.append(group.tq1.get(9, 1))
    values.append(group.orc.get(7, 6))
    if group.obr is not None:
        values.append(group.obr.get(27, 6))
    for value in values:
        if value:
            return PRIORITIES.get(value.upper(), "")
    return ""


def _modality(value: str, options: MappingOptions, location: str) -> str:
    mapped = options.modality_map.get(value.upper(), value.upper())
    if mapped != value.upper():
        logger.debug("modality %s mapped to %s", value, mapped)
    return _identifier(mapped, CS, location)


def _checked_code(code: Code | None, location: str) -> Code | None:
    if code is None:
        return None
    return Code(
        value=_identifier(code.value, LO, location),
        scheme=_identifier(code.scheme, SH, location),
        meaning=_text(code.meaning, LO),
    )


def _route(step: ScheduledStep, procedure_code: str, options: MappingOptions) -> ScheduledStep:
    """Fill station AE title/name from the first matching rule when the order has none."""
    if step.scheduled_station_ae_title or not options.station_rules:
        return step
    for rule in options.station_rules:
        if rule.matches(step.modality, procedure_code, step.scheduled_procedure_step_location):
            logger.debug("step routed to station %s by rule", rule.station_ae_title)
            return ScheduledStep(
                **{
                    **step.__dict__,
                    "scheduled_station_ae_title": rule.station_ae_title,
                    "scheduled_station_name": step.scheduled_station_name or rule.station_name,
                }
            )
    return step


def _details(header: MessageHeader, group: _Group) -> dict[str, str]:
    """The order details of HL7-MAPPING.md section 1, as RequestedProcedure fields."""
    orc, obr = group.orc, group.obr
    assert obr is not None
    reasons = [_ce_text(obr, 31, r) for r in range(len(obr.repetitions(31)))]
    return dict(
        institution_name=_lo(
            _first(
                [(_ce_text(orc, 17), "ORC-17"), (_hd(header.sending_facility, header), "MSH-4")],
                "Institution Name",
            )
        ),
        institutional_department_name=_lo(orc.get(13, 9)),
        reason_for_the_requested_procedure=_lo("; ".join(r for r in reasons if r)),
        requested_procedure_comments=_comments(group.notes),
        confidentiality_code=_lo(_ce_text(orc, 28)),
        patient_transport_arrangements=_lo(obr.get(30)),
        patient_state=_lo(_ce_text(obr, 12)),
        # OBR-13 is ST: components (an unescaped ^) are words of one text.
        medical_alerts=_lo(" ".join(c for c in obr.components(13) if c)),
        patient_weight=_measurement(group.observations, _WEIGHT_NAMES, _WEIGHT_UNITS, "weight"),
        patient_size=_measurement(group.observations, _HEIGHT_NAMES, _HEIGHT_UNITS, "height"),
    )


def _procedures(
    header: MessageHeader, group: _Group, referring: str, options: MappingOptions
) -> list[RequestedProcedure]:
    obr = group.obr
    assert obr is not None
    orc = group.orc
    placer = _identifier(
        _first([(orc.get(2), "ORC-2"), (obr.get(2), "OBR-2")], "placer order number"), LO, "ORC-2"
    )
    filler = _identifier(
        _first([(orc.get(3), "ORC-3"), (obr.get(3), "OBR-3")], "filler order number"), LO, "ORC-3"
    )
    universal = _checked_code(_code(obr, 4), "OBR-4")
    requested_code = _checked_code(_code(obr, 44), "OBR-44")
    if requested_code is None and universal is not None:
        logger.debug("fallback: Requested Procedure Code from OBR-4 (OBR-44 empty)")
        requested_code = universal
    description = _text(requested_code.meaning, LO) if requested_code else ""
    protocol = _checked_code(_code(obr, 4, options.protocol_code_components), "OBR-4")
    start = _start(group)
    performing = _text(_technician(obr, 34), PN)
    priority = _priority(group)
    requesting = _text(_xcn(obr, 16), PN)
    base = dict(
        requested_procedure_description=description,
        requested_procedure_code=requested_code,
        requested_procedure_priority=priority,
        requesting_physician=requesting,
        referring_physician_name=referring,
        placer_order_number=placer,
        filler_order_number=filler,
        **_details(header, group),
    )
    code_value = requested_code.value if requested_code else ""
    orc18 = _identifier(orc.get(18), AE, "ORC-18") if options.station_from_orc18 else ""
    if orc18:
        logger.debug("fallback: Scheduled Station AE Title from ORC-18 where IPC-9 is empty")

    if group.ipcs:
        # OMI^O23: one SPS per IPC; IPC-1/2/3 say which requested procedure it is in.
        by_procedure: dict[tuple[str, str, str], list[ScheduledStep]] = {}
        for ipc in group.ipcs:
            key = (
                _identifier(ipc.get(1), SH, "IPC-1"),
                _identifier(ipc.get(2), SH, "IPC-2"),
                _uid(ipc.get(3), "IPC-3"),
            )
            codes = tuple(
                code
                for code in (
                    _checked_code(
                        Code(value=c[0], meaning=(c + ["", ""])[1], scheme=(c + ["", ""])[2]),
                        "IPC-6",
                    )
                    for c in (ipc.components(6, r) for r in range(len(ipc.repetitions(6))))
                    if c and c[0]
                )
                if code is not None
            )
            step = ScheduledStep(
                scheduled_procedure_step_id=_identifier(ipc.get(4), SH, "IPC-4"),
                modality=_modality(ipc.get(5), options, "IPC-5"),
                scheduled_station_name=_identifier(ipc.get(7), SH, "IPC-7"),
                scheduled_procedure_step_location=_identifier(ipc.get(8), SH, "IPC-8"),
                scheduled_station_ae_title=_identifier(ipc.get(9), AE, "IPC-9") or orc18,
                start=start,
                scheduled_performing_physician_name=performing,
                scheduled_procedure_step_description=codes[0].meaning if codes else description,
                scheduled_protocol_codes=codes,
            )
            by_procedure.setdefault(key, []).append(_route(step, code_value, options))
        return [
            RequestedProcedure(
                study_instance_uid=uid,
                requested_procedure_id=rp_id,
                accession_number=accession,
                steps=tuple(steps),
                **base,  # type: ignore[arg-type]
            )
            for (accession, rp_id, uid), steps in by_procedure.items()
        ]

    study_uid = _uid(group.zds.get(1) if group.zds is not None else "", "ZDS-1")
    if protocol is None:
        logger.debug("fallback: SPS Description from the requested procedure (no OBR-4 protocol)")
    step = ScheduledStep(
        scheduled_procedure_step_id=_identifier(obr.get(20), SH, "OBR-20"),
        modality=_modality(obr.get(24), options, "OBR-24"),
        scheduled_station_ae_title=orc18,
        start=start,
        scheduled_performing_physician_name=performing,
        # Description = protocol code meaning (dcm4chee); without a protocol code the
        # procedure's description is what the technologist needs to see.
        scheduled_procedure_step_description=protocol.meaning if protocol else description,
        scheduled_protocol_codes=(protocol,) if protocol else (),
    )
    return [
        RequestedProcedure(
            study_instance_uid=study_uid,
            requested_procedure_id=_identifier(obr.get(19), SH, "OBR-19"),
            accession_number=_identifier(obr.get(18), SH, "OBR-18"),
            steps=(_route(step, code_value, options),),
            **base,  # type: ignore[arg-type]
        )
    ]
