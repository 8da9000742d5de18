"""HL7 original-mode acknowledgements (ACK with MSA and ERR), built with hl7apy.

HL7 v2.5.1 ch. 2.9 (original acknowledgment rules): AA when the message was applied
and committed, AE when it was rejected for an error the sender can fix, AR when it
will never be accepted (unsupported type, event or version) or the receiver failed.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import re
import uuid
from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment

from mwl.hl7.errors import ERROR_TEXTS, Hl7MessageError
from mwl.hl7.grammar import MessageHeader

ACCEPT = "AA"
ERROR = "AE"
REJECT = "AR"

# Versions before 2.3 have no MSH-18 (hl7apy refuses it); those and unknown ones
# are answered in 2.5.
_ACK_VERSIONS = {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"}
_FALLBACK_VERSION = "2.5"
_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:-(\d+)(?:\.(\d+))?)?")
_counter = itertools.count(1)
_prefix = uuid.uuid4().hex[:8].upper()


def error_location(location: str) -> tuple[str, str, str, str]:
    """``ORC-7.4`` -> (segment, field, component) parts for ERR: ``("ORC", "7", "4")``.

    Returns
    -------
    tuple of str
        Segment ID, segment sequence ("1"), field position, component ("" when none).
    """
    match = _LOCATION.fullmatch(location.strip())
    if not match:
        return "", "", "", ""
    segment, position, component = match.groups()
    return segment, "1", position or "", component or ""


def escape(text: str, encoding_characters: str = "^~\\&", field_separator: str = "|") -> str:
    """Escape delimiters in ``text`` for an ST/TX value (HL7 v2.5.1 2.7.4)."""
    chars = (encoding_characters + "^~\\&"[len(encoding_characters) :])[:4]
    component, repetition, esc, subcomponent = chars[0], chars[1], chars[2], chars[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in (
        (field_separator, "F"),
        (component, "S"),
        (subcomponent, "T"),
        (repetition, "R"),
    ):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


# Stand-ins for the per-message values in a cached ACK: letters only, so hl7apy
# keeps them as they are and a plain replace fills them in.
_NOW = "MWLTOKENNOW"
_ACK_ID = "MWLTOKENACKID"
_CONTROL_ID = "MWLTOKENCONTROLID"


@dataclass(frozen=True)
class _AckKey:
    version: str
    receiving_application: str
    receiving_facility: str
    sending_application: str
    sending_facility: str
    trigger_event: str
    processing_id: str
    charset: str
    has_control_id: bool
    ack_code: str
    error: tuple[int, str, str] | None


def build_ack(
    header: MessageHeader | None,
    ack_code: str,
    error: Hl7MessageError | None = None,
    *,
    now: dt.datetime | None = None,
    receiver_application: str = "MWL",
) -> bytes:
    """Build the ACK for a message, encoded in that message's character set.

    hl7apy builds the ACK's structure once per sender, outcome and error (an LRU
    cache: it takes about 10 ms, more than the rest of a message's processing);
    the values that change with every message (MSH-7, MSH-10, MSA-2) are put into
    the cached ER7 text.

    Parameters
    ----------
    header
        MSH of the message being answered; None when it had no readable MSH (the ACK
        then has an empty MSA-2).
    ack_code
        ``AA``, ``AE`` or ``AR`` (MSA-1).
    error
        What goes into ERR (and MSA-3 for versions before 2.5); None for AA.
    now
        MSH-7 (local time); defaults to the current time.
    receiver_application
        MSH-3 when the original MSH-5 was empty.

    Returns
    -------
    bytes
        The ACK payload (without MLLP framing), segments separated by CR.
    """
    version = (
        header.version_id if header and header.version_id in _ACK_VERSIONS else _FALLBACK_VERSION
    )
    key = _AckKey(
        version=version,
        receiving_application=(header.receiving_application if header else "")
        or receiver_application,
        receiving_facility=header.receiving_facility if header else "",
        sending_application=header.sending_application if header else "",
        sending_facility=header.sending_facility if header else "",
        trigger_event=header.trigger_event if header and header.trigger_event.isalnum() else "",
        processing_id=(
            header.processing_id[:1] if header and header.processing_id.isalpha() else "P"
        ),
        charset=header.charset if header else "",
        has_control_id=bool(header and header.message_control_id),
        ack_code=ack_code,
        error=(error.code, error.location, error.text) if error is not None else None,
    )
    text = _template(key)
    text = text.replace(_NOW, (now or dt.datetime.now()).strftime("%Y%m%d%H%M%S"))
    text = text.replace(_ACK_ID, f"{_prefix}{next(_counter):012d}")
    if header is not None:
        # MSA-2 echoes MSH-10 exactly as it was sent (already in ER7 form).
        text = text.replace(_CONTROL_ID, header.message_control_id)
    codec = header.codec if header is not None else "ascii"
    return text.encode(codec, errors="replace")


@functools.lru_cache(maxsize=512)
def _template(key: _AckKey) -> str:
    version = key.version
    level = VALIDATION_LEVEL.TOLERANT
    ack = Message("ACK", version=version, validation_level=level)
    msh = ack.msh
    # Sender and receiver swapped (HL7 v2.5.1 2.9.2); values in ER7 form as sent.
    msh.msh_3 = key.receiving_application
    if key.receiving_facility:
        msh.msh_4 = key.receiving_facility
    if key.sending_application:
        msh.msh_5 = key.sending_application
    if key.sending_facility:
        msh.msh_6 = key.sending_facility
    msh.msh_7 = _NOW
    event = key.trigger_event
    if version in {"2.1", "2.2", "2.3"}:
        msh.msh_9 = f"ACK^{event}" if event else "ACK"
    else:
        msh.msh_9 = f"ACK^{event}^ACK" if event else "ACK^^ACK"
    msh.msh_10 = _ACK_ID
    msh.msh_11 = key.processing_id
    msh.msh_12 = version
    if key.charset:
        msh.msh_18 = key.charset

    msa = Segment("MSA", version=version, validation_level=level)
    msa.msa_1 = key.ack_code
    if key.has_control_id:
        msa.msa_2 = _CONTROL_ID
    error = Hl7MessageError(*key.error) if key.error is not None else None
    if error is not None and version < "2.5":
        msa.msa_3 = escape(error.text)
    ack.add(msa)
    if error is not None:
        ack.add(_err(error, version, level))
    text: str = ack.to_er7()
    return text


def _err(error: Hl7MessageError, version: str, level: VALIDATION_LEVEL) -> Segment:
    err = Segment("ERR", version=version, validation_level=level)
    segment, sequence, position, component = error_location(error.location)
    label = ERROR_TEXTS.get(error.code, "Error")
    if version < "2.5":
        # ERR-1 (ELD): segment ^ sequence ^ field ^ code&text&HL70357. Set as ER7: the
        # component names differ between hl7apy's 2.3 (CM_ELD) and 2.4 structures.
        err.err_1 = f"{segment}^{sequence}^{position}^{error.code}&{label}&HL70357"
        return err
    if segment:
        err.err_2.erl_1 = segment
        err.err_2.erl_2 = sequence
        if position:
            err.err_2.erl_3 = position
        if component:
            err.err_2.erl_4 = "1"
            err.err_2.erl_5 = component
    err.err_3.cwe_1 = str(error.code)
    err.err_3.cwe_2 = label
    err.err_3.cwe_3 = "HL70357"
    err.err_4 = "E"
    # ERR-8 user message: the reason in words, for the RIS operator.
    err.err_8 = escape(error.text)
    return err
