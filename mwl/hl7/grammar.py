"""The HL7 v2 encoding rules: MSH, character sets, delimiters, segments, escape sequences.

HL7 v2.5.1 ch. 2. The message is split on its own delimiters (MSH-1, MSH-2) before
any escape sequence is decoded, so ``\\S\\`` inside a name never splits a component.
What the fields mean is the mappings' business (:mod:`mwl.hl7.order_mapping`,
:mod:`mwl.hl7.patient_mapping`).
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mwl.hl7.errors import (
    DATA_TYPE_ERROR,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    Hl7MessageError,
)

logger = logging.getLogger(__name__)

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

# C0 controls other than TAB, LF, CR have no place in a DICOM value (PS3.5 6.1.3)
# and PostgreSQL refuses NUL in text: they are dropped from every value read.
_CONTROLS = dict.fromkeys(c for c in range(32) if c not in (9, 10, 13))
_FORMATTING = {".br": "\r\n", "H": "", "N": ""}


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


@dataclass(frozen=True)
class Delimiters:
    """The field separator (MSH-1) and encoding characters (MSH-2) of one message."""

    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


class Segment:
    """One segment split into fields; values are read with :meth:`get` (unescaped)."""

    __slots__ = ("name", "fields", "_delimiters", "_codec")

    def __init__(self, name: str, fields: list[str], delimiters: Delimiters, codec: str) -> None:
        self.name = name
        self.fields = fields  # fields[n] is SEG-n, MSH included (fields[1] = MSH-1)
        self._delimiters = delimiters
        self._codec = codec

    @property
    def delimiters(self) -> Delimiters:
        """The message's delimiters, for splitting a value :meth:`get` does not reach."""
        return self._delimiters

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


def unescape(value: str, delimiters: Delimiters | None = None, codec: str = "iso8859-1") -> str:
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


_DEFAULT_DELIMITERS = Delimiters("|", "^", "~", "\\", "&")


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
    delimiters = Delimiters(header.field_separator, enc[0], enc[1], enc[2], enc[3])
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
