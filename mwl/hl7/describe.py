"""A stored HL7 message split for people: segments, fields and their names from hl7apy.

Used by the message log page (through the composition root, as the web may not
import this adapter). The message is split on its own delimiters, as the mapping
splits it (:func:`mwl.hl7.grammar.split_segments`); field and component names come
from hl7apy's reference tables for the message's version (MSH-12), 2.5 when that
version is unknown. Lenient: whatever cannot be split is still shown as lines.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping

from hl7apy import SUPPORTED_LIBRARIES, load_reference
from hl7apy.exceptions import HL7apyException

from mwl.hl7.errors import Hl7MessageError
from mwl.hl7.grammar import MessageHeader, Segment, safe_header, split_segments
from mwl.operations.message_view import ComponentView, FieldView, MessageView, SegmentView

FALLBACK_VERSION = "2.5"

# Segment names as HL7 v2.5.1 titles them; hl7apy has field names only.
SEGMENT_NAMES: Mapping[str, str] = {
    "MSH": "Message Header",
    "MSA": "Message Acknowledgment",
    "ERR": "Error",
    "EVN": "Event Type",
    "PID": "Patient Identification",
    "PD1": "Patient Additional Demographic",
    "PV1": "Patient Visit",
    "PV2": "Patient Visit - Additional Information",
    "MRG": "Merge Patient Information",
    "AL1": "Patient Allergy Information",
    "NTE": "Notes and Comments",
    "ORC": "Common Order",
    "OBR": "Observation Request",
    "OBX": "Observation/Result",
    "TQ1": "Timing/Quantity",
    "TQ2": "Timing/Quantity Relationship",
    "IPC": "Imaging Procedure Control",
    "DG1": "Diagnosis",
    "IN1": "Insurance",
    "GT1": "Guarantor",
    "NK1": "Next of Kin / Associated Parties",
    "ZDS": "Study Information (IHE RAD Z-segment)",
}
# Fields of Z-segments the mapping reads (docs/hl7-mapping.md), which no table knows.
_Z_FIELDS: Mapping[tuple[str, int], tuple[str, tuple[str, ...]]] = {
    ("ZDS", 1): (
        "Study Instance UID",
        ("Study Instance UID", "Implementation Identifier", "Type of Data", "Subtype"),
    ),
}
# Words of hl7apy's long names kept in capitals or in lower case.
# (Data type names such as HD or ST end some of them: "Facility HD".)
_UPPER = frozenset(
    {"ID", "UID", "HL7", "MD", "DR", "II", "III", "OID", "ISO", "URI", "DOB", "EI", "HD", "AE"}
    | {"ST", "CE", "CWE", "CX", "TS", "XCN", "XPN", "XAD", "IS", "NM", "PPN", "CM", "TQ"}
)
_LOWER = frozenset({"of", "or", "and", "the", "for", "to", "in", "by", "on", "at", "a", "an"})


def describe_message(raw: bytes, default_charset: str = "8859/1") -> MessageView:
    """Split a logged message (or ACK) into named segments and fields.

    Never raises for any input: a message without a readable MSH gets only its raw
    lines and a ``problem``; bytes that are not valid in the message's charset are
    shown with replacement characters and a ``problem``.

    Parameters
    ----------
    raw
        The message as received (or the ACK as sent).
    default_charset
        HL7 charset label for messages without MSH-18 (``hl7_default_charset``).

    Returns
    -------
    MessageView
        Segments in order, each with its non-empty fields, positions and long names.
    """
    header = safe_header(raw, default_charset)
    if header is None:
        return MessageView(
            segments=(),
            raw_lines=_lines(_decode(raw, None)),
            problem="the message has no readable MSH segment",
        )
    version = _reference_version(header.version_id)
    problem = ""
    try:
        segments = split_segments(raw, header)
    except Hl7MessageError as exc:
        problem = exc.text
        # Shown anyway, undecodable bytes replaced: the page must show what came in.
        readable = raw.decode(header.codec, errors="replace").encode("utf-8")
        segments = split_segments(readable, dataclasses.replace(header, codec="utf-8"))
    return MessageView(
        segments=tuple(_segment(segment, header, version) for segment in segments),
        raw_lines=_lines(_decode(raw, header.codec)),
        version=version,
        problem=problem,
    )


def _decode(raw: bytes, codec: str | None) -> str:
    if codec is not None:
        return raw.decode(codec, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _lines(text: str) -> tuple[str, ...]:
    text = text.strip("\x0b\x1c\r\n")
    return tuple(line for line in re.split(r"\r\n|\r|\n", text) if line.strip())


def _reference_version(version_id: str) -> str:
    """The hl7apy library for MSH-12, or :data:`FALLBACK_VERSION`."""
    return version_id if version_id in SUPPORTED_LIBRARIES else FALLBACK_VERSION


def _segment(segment: Segment, header: MessageHeader, version: str) -> SegmentView:
    name = segment.name
    separator = header.field_separator
    if name == "MSH":
        line = "MSH" + separator + separator.join(segment.fields[2:])
    else:
        line = separator.join(segment.fields)
    fields = []
    for position in range(1, len(segment.fields)):
        value = segment.raw(position)
        if not value:
            continue
        label = f"{name}-{position}"
        field_name, component_names = field_names(name, position, version)
        # MSH-1 and MSH-2 are the delimiters themselves: nothing to split.
        delimiter_field = name == "MSH" and position <= 2
        components = (
            () if delimiter_field else _components(segment, position, header, component_names)
        )
        fields.append(FieldView(label, field_name, value, components))
    return SegmentView(name, SEGMENT_NAMES.get(name, ""), tuple(fields), line)


def _components(
    segment: Segment, position: int, header: MessageHeader, names: tuple[str, ...]
) -> tuple[ComponentView, ...]:
    repetitions = segment.repetitions(position)
    # Defaults for missing encoding characters, as split_segments fills them in.
    encoding = (header.encoding_characters + "^~\\&"[len(header.encoding_characters) :])[:4]
    component_separator, subcomponent_separator = encoding[0], encoding[3]
    split = [repetition.split(component_separator) for repetition in repetitions]
    if len(split) <= 1 and all(len(parts) <= 1 for parts in split):
        return ()
    views = []
    for index, parts in enumerate(split):
        prefix = f"{segment.name}-{position}" + (f"[{index + 1}]" if index else "")
        for number, part in enumerate(parts, start=1):
            subcomponents = part.split(subcomponent_separator)
            value = subcomponent_separator.join(
                segment.part(part, 1, n) for n in range(1, len(subcomponents) + 1)
            )
            if not value.strip(subcomponent_separator):
                continue
            name = names[number - 1] if number <= len(names) else ""
            views.append(ComponentView(f"{prefix}.{number}", name, value))
    return tuple(views)


@functools.lru_cache(maxsize=4096)
def field_names(segment: str, position: int, version: str) -> tuple[str, tuple[str, ...]]:
    """The long names of SEG-n and of its components: ``("Patient Name", ("Family Name", ...))``.

    Looked up in hl7apy's tables for ``version``, then for :data:`FALLBACK_VERSION`
    (a v2.3.1 message may carry a v2.5 segment such as TQ1); ``("", ())`` when no
    table knows the field. Cached: a message repeats the same few fields.
    """
    for candidate in dict.fromkeys((version, FALLBACK_VERSION)):
        try:
            reference = load_reference(f"{segment}_{position}", "Field", candidate)
        except (HL7apyException, KeyError, ValueError):
            continue
        # ('leaf', None, datatype, LONG_NAME, table, -1) or
        # ('sequence', ((child, [kind, ..., datatype, LONG_NAME, ...], ...), ...), ...).
        components: tuple[str, ...] = ()
        if reference[0] == "sequence":
            components = tuple(_title(child[1][3]) for child in reference[1])
        return _title(reference[3], segment), components
    return _Z_FIELDS.get((segment, position), ("", ()))


def _title(long_name: object, segment: str = "") -> str:
    """hl7apy's ``PATIENT_NAME`` as ``Patient Name`` (``SET_ID_PID`` as ``Set ID PID``)."""
    if not isinstance(long_name, str):
        return ""
    words = [w for w in f"_{long_name}_".replace("_E_G_", "_e.g._").split("_") if w]
    titled = []
    for index, word in enumerate(words):
        if word in _UPPER or word == segment or word == "e.g.":
            titled.append(word)
        elif index and word.lower() in _LOWER:
            titled.append(word.lower())
        else:
            titled.append(word.capitalize())
    return " ".join(titled)
