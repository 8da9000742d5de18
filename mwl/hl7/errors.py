"""Why an HL7 message is not accepted: HL7 table 0357 codes and :class:`Hl7MessageError`.

The error carries what the ACK's ERR segment must say (:mod:`mwl.hl7.ack`): the
condition code, the field at fault written ``SEG-n[.c]`` and a reason in words.
"""

from __future__ import annotations

from collections.abc import Mapping

from mwl.errors import MwlError

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
