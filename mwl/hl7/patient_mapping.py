"""ADT^A08/A31/A40/A47 to patient changes, and PID/PV1/AL1 to patient demographics.

The demographics are the same in an order message (:mod:`mwl.hl7.order_mapping`)
and in ADT (HL7 v2.5.1 ch. 3; docs/hl7-mapping.md). Lenient on input: a birth date that
is not a full date is dropped, an identifier that does not fit is refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from mwl.domain import PatientDemographics
from mwl.hl7.datatypes import (
    LO,
    PN,
    administrative_sex,
    coded_text,
    identifier,
    lo_text,
    truncated,
    xpn_name,
)
from mwl.hl7.errors import REQUIRED_FIELD_MISSING, SEGMENT_SEQUENCE_ERROR, Hl7MessageError
from mwl.hl7.grammar import MessageHeader, Segment
from mwl.orders.patients import PatientChange, PatientMessage

logger = logging.getLogger(__name__)

# ADT trigger event -> patient change (HL7 v2.5.1 ch. 3).
ADT_CHANGES: Mapping[str, PatientChange] = {
    "A08": PatientChange.UPDATE,  # update patient information
    "A31": PatientChange.UPDATE,  # update person information
    "A40": PatientChange.MERGE,  # merge patient - patient identifier list
    "A47": PatientChange.CHANGE_ID,  # change patient identifier list
}

# Allergies (0010,2110) is LO with several values: the column holds this many characters.
ALLERGIES_LENGTH = 1024
# PV1-15 ambulatory status (HL7 table 0009) B6 = pregnant -> Pregnancy Status 3 (PS3.3).
_PREGNANT = "B6"
PREGNANCY_STATUS_PREGNANT = "3"

_DIGITS8 = re.compile(r"[0-9]{8}")


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
            prior_id = identifier(segment.get(1, 1), LO, "MRG-1")
            if not prior_id:
                raise Hl7MessageError(REQUIRED_FIELD_MISSING, "MRG-1", "prior patient ID is empty")
            messages.append(
                PatientMessage(
                    change,
                    patient_demographics(pid),
                    prior_id,
                    identifier(segment.get(1, 4), LO, "MRG-1.4"),
                )
            )
    if change is PatientChange.UPDATE and pid is not None:
        # A08/A31 carry the visit (PV1) and allergies (AL1) as well: they update them.
        messages.append(
            PatientMessage(
                change, patient_demographics(pid, pv1, allergies, has_visit=pv1 is not None)
            )
        )
    if not messages:
        missing = "PID" if change is PatientChange.UPDATE or pid is None else "MRG"
        raise Hl7MessageError(
            SEGMENT_SEQUENCE_ERROR, missing, f"the message has no {missing} segment"
        )
    return tuple(messages)


def patient_demographics(
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

    Raises
    ------
    Hl7MessageError
        101 at PID-3 without a patient ID; 102 for an identifier that does not fit.
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
        patient_id=identifier(patient_id, LO, "PID-3"),
        issuer_of_patient_id=identifier(pid.get(3, 4), LO, "PID-3.4"),
        patient_name=truncated(xpn_name(pid, 5), PN),
        patient_birth_date=birth,
        patient_sex=administrative_sex(pid.get(8)),
        admission_id=_admission_id(pid, pv1, has_visit),
        current_patient_location=_location(pv1) if has_visit and pv1 is not None else None,
        pregnancy_status=_pregnancy(pv1) if has_visit and pv1 is not None else None,
        allergies=_allergies(allergies) if allergies else None,
    )


def _admission_id(pid: Segment, pv1: Segment | None, has_visit: bool) -> str | None:
    """Admission ID: PV1-19.1 (visit number), else PID-18.1 (account number)."""
    visit = pv1.get(19, 1) if pv1 is not None else ""
    if visit:
        return identifier(visit, LO, "PV1-19")
    account = pid.get(18, 1)
    if account:
        logger.debug("fallback: Admission ID from PID-18 (PV1-19 empty)")
        return identifier(account, LO, "PID-18")
    return "" if has_visit else None


def _location(pv1: Segment) -> str:
    """PV1-3 (PL: point of care ^ room ^ bed) as readable text: ``RAD, room 12, bed 3``."""
    point, room, bed = (pv1.get(3, c) for c in (1, 2, 3))
    parts = [point] if point else []
    parts += [f"room {room}"] if room else []
    parts += [f"bed {bed}"] if bed else []
    return lo_text(", ".join(parts))


def _pregnancy(pv1: Segment) -> str:
    """PV1-15 (ambulatory status, repeating): ``B6`` (pregnant) -> 3, else unknown."""
    statuses = {pv1.get(15, 1, repetition=r).upper() for r in range(len(pv1.repetitions(15)))}
    return PREGNANCY_STATUS_PREGNANT if _PREGNANT in statuses else ""


def _allergies(segments: Sequence[Segment]) -> str:
    """AL1-3 (allergen, CE: text .2, else code .1) of every AL1, as LO values."""
    values: list[str] = []
    for segment in segments:
        value = lo_text(coded_text(segment, 3))
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
