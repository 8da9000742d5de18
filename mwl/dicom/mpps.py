"""Modality Performed Procedure Step SCP handlers: N-CREATE and N-SET (PS3.4 Annex F).

Thin, as the C-FIND handler: validate and translate the attribute list into a
:class:`~mwl.domain.PerformedStep` (pure functions, tested without sockets), call
:mod:`mwl.worklist.mpps` in one unit of work, and map its errors to named DIMSE statuses
with an Error Comment that says what to fix.
"""

from __future__ import annotations

import datetime as dt
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.status import Status
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.audit import messages as audit_messages
from mwl.audit.auditor import Auditor
from mwl.config import Settings
from mwl.dicom.net.messages import DatasetTooLargeError
from mwl.dicom.net.service import DimseRequest
from mwl.domain import MppsStatus, PerformedStep, ScheduledStepReference
from mwl.operations import metrics
from mwl.store.models import PerformedProcedureStep
from mwl.worklist.mpps import (
    DuplicateMppsError,
    InvalidMppsError,
    MppsFinalError,
    MppsIncompleteError,
    MppsOutcome,
    UnknownMppsError,
    create_performed_step,
    step_status_table,
    update_performed_step,
)

logger = logging.getLogger(__name__)

# DIMSE statuses of the MPPS SOP Class: PS3.4 F.7.2.1.3 (N-CREATE) and F.7.2.2.3
# (N-SET), with the general codes of PS3.7 Annex C. pynetdicom names only Success.
#: Failure: No Such Attribute (PS3.7 C.4.x): a tag not in the MPPS IOD.
NO_SUCH_ATTRIBUTE = 0x0105
#: Failure: Invalid Attribute Value (a status that is not a defined term, a bad date).
INVALID_ATTRIBUTE_VALUE = 0x0106
#: Failure: Processing Failure; with Error ID 0xA710 "Performed Procedure Step Object
#: may no longer be updated" (PS3.4 F.7.2.2.3), else the database failed.
PROCESSING_FAILURE = 0x0110
#: Error ID (0000,0903) sent with 0x0110 for an N-SET on a COMPLETED/DISCONTINUED step.
ERROR_ID_MAY_NO_LONGER_BE_UPDATED = 0xA710
#: Failure: Duplicate SOP Instance (N-CREATE for a UID that exists).
DUPLICATE_SOP_INSTANCE = 0x0111
#: Failure: No Such SOP Instance (N-SET for a UID never created).
NO_SUCH_SOP_INSTANCE = 0x0112
#: Failure: Missing Attribute (a Type 1 attribute is absent).
MISSING_ATTRIBUTE = 0x0120
#: Failure: Missing Attribute Value (a Type 1 attribute is present but empty).
MISSING_ATTRIBUTE_VALUE = 0x0121

_ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, EOFError, struct.error)

# PS3.4 Table F.7.2-1: Type 1 attributes of an N-CREATE (top level), in the order a
# modality is most likely to get wrong.
N_CREATE_TYPE_1 = (
    "PerformedProcedureStepStatus",
    "ScheduledStepAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
)
# PS3.4 Table F.7.2-1, "Not allowed" in N-SET: what identifies the step and its patient.
N_SET_NOT_ALLOWED = frozenset(
    {
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
        "SOPClassUID",
        "SOPInstanceUID",
    }
)


class MppsAttributeError(Exception):
    """The attribute list breaks PS3.4 F.7.2; carries the DIMSE status to answer with."""

    def __init__(
        self,
        status: int,
        comment: str,
        keywords: Iterable[str] = (),
        *,
        not_allowed: bool = False,
    ) -> None:
        self.status = status
        self.comment = comment
        self.keywords = tuple(keywords)
        # An attribute only N-CREATE may set (PS3.4 Table F.7.2-1 "Not allowed" in N-SET).
        self.not_allowed = not_allowed
        super().__init__(comment)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _status(ds: Dataset) -> MppsStatus:
    value = _text(ds, "PerformedProcedureStepStatus").upper()
    try:
        return MppsStatus(value)
    except ValueError:
        raise MppsAttributeError(
            INVALID_ATTRIBUTE_VALUE,
            f"PerformedProcedureStepStatus {value!r} is not IN PROGRESS/COMPLETED/DISCONTINUED",
            ["PerformedProcedureStepStatus"],
        ) from None


def _datetime(ds: Dataset, date_keyword: str, time_keyword: str) -> dt.datetime | None:
    """DA + TM as one local date-time; None when either is empty."""
    date, time = _text(ds, date_keyword), _text(ds, time_keyword)
    if not date or not time:
        return None
    digits = time.split(".")[0].ljust(6, "0")
    try:
        return dt.datetime.strptime(date + digits, "%Y%m%d%H%M%S")
    except ValueError:
        raise MppsAttributeError(
            INVALID_ATTRIBUTE_VALUE,
            f"{date_keyword}/{time_keyword} is not a valid DA/TM",
            [date_keyword, time_keyword],
        ) from None


def _references(ds: Dataset) -> tuple[ScheduledStepReference, ...]:
    refs = []
    for item in ds.ScheduledStepAttributesSequence:
        # Study Instance UID is Type 1 inside the item (PS3.4 Table F.7.2-1).
        if "StudyInstanceUID" not in item:
            raise MppsAttributeError(
                MISSING_ATTRIBUTE,
                "ScheduledStepAttributesSequence item lacks StudyInstanceUID",
                ["ScheduledStepAttributesSequence"],
            )
        if not _text(item, "StudyInstanceUID"):
            raise MppsAttributeError(
                MISSING_ATTRIBUTE_VALUE,
                "ScheduledStepAttributesSequence>StudyInstanceUID is empty",
                ["ScheduledStepAttributesSequence"],
            )
        refs.append(
            ScheduledStepReference(
                study_instance_uid=_text(item, "StudyInstanceUID"),
                accession_number=_text(item, "AccessionNumber"),
                requested_procedure_id=_text(item, "RequestedProcedureID"),
                scheduled_procedure_step_id=_text(item, "ScheduledProcedureStepID"),
            )
        )
    return tuple(refs)


def _json(ds: Dataset) -> str:
    try:
        # Serialising decodes every element, so a garbled attribute list fails here.
        return ds.to_json()
    except _DECODE_ERRORS as exc:
        raise MppsAttributeError(
            PROCESSING_FAILURE, f"the attribute list cannot be decoded: {type(exc).__name__}"
        ) from None


def performed_step_from_create(ds: Dataset, sop_instance_uid: str) -> PerformedStep:
    """Translate an N-CREATE attribute list (PS3.4 F.7.2.1.2) into a domain value.

    Type 1 attributes must be present and have a value; Type 2 attributes may be
    missing (lenient on input: many modalities leave some out).

    Raises
    ------
    MppsAttributeError
        ``MISSING_ATTRIBUTE``, ``MISSING_ATTRIBUTE_VALUE`` or ``INVALID_ATTRIBUTE_VALUE``
        naming the attribute; ``PROCESSING_FAILURE`` when the list cannot be decoded.
    """
    dataset_json = _json(ds)
    for keyword in N_CREATE_TYPE_1:
        if keyword not in ds:
            raise MppsAttributeError(MISSING_ATTRIBUTE, f"{keyword} is missing", [keyword])
        element = ds[keyword]
        empty = not element.value if element.VR == "SQ" else not _text(ds, keyword)
        if empty:
            raise MppsAttributeError(MISSING_ATTRIBUTE_VALUE, f"{keyword} has no value", [keyword])
    status = _status(ds)
    if status is not MppsStatus.IN_PROGRESS:
        raise MppsAttributeError(
            INVALID_ATTRIBUTE_VALUE,
            f"N-CREATE must be IN PROGRESS, not {status.value}",
            ["PerformedProcedureStepStatus"],
        )
    return PerformedStep(
        sop_instance_uid=sop_instance_uid,
        status=status,
        dataset_json=dataset_json,
        references=_references(ds),
        performed_station_ae_title=_text(ds, "PerformedStationAETitle")[:16],
        modality=_text(ds, "Modality")[:16],
        start=_datetime(ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
        end=_datetime(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"),
    )


def performed_step_from_set(ds: Dataset, sop_instance_uid: str) -> PerformedStep:
    """Translate an N-SET modification list (PS3.4 F.7.2.2.2) into a domain change.

    Raises
    ------
    MppsAttributeError
        ``INVALID_ATTRIBUTE_VALUE`` for an attribute N-SET may not change (PS3.4
        Table F.7.2-1, "Not allowed") or a bad status or date; ``PROCESSING_FAILURE``
        when the list cannot be decoded.
    """
    dataset_json = _json(ds)
    not_allowed = sorted(e.keyword for e in ds if e.keyword in N_SET_NOT_ALLOWED)
    if not_allowed:
        raise MppsAttributeError(
            INVALID_ATTRIBUTE_VALUE,
            f"N-SET may not change {', '.join(not_allowed)}",
            not_allowed,
            not_allowed=True,
        )
    status = _status(ds) if "PerformedProcedureStepStatus" in ds else None
    return PerformedStep(
        sop_instance_uid=sop_instance_uid,
        status=status,
        dataset_json=dataset_json,
        end=_datetime(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"),
    )


def _failure(status: int, comment: str, keywords: Iterable[str] = (), error_id: int = 0) -> Dataset:
    """A failure status Dataset: Error Comment, Error ID, Attribute Identifier List (PS3.7 C.4)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:_ERROR_COMMENT_LENGTH]
    if error_id:
        ds.ErrorID = error_id
    tags: list[BaseTag] = [Tag(t) for k in keywords if (t := tag_for_keyword(k)) is not None]
    if tags:
        ds.AttributeIdentifierList = tags
    return ds


def _destination(settings: Settings) -> str | None:
    return f"{settings.ris_host}:{settings.ris_port}" if settings.ris_host else None


@dataclass(frozen=True)
class MppsCaller:
    """Who reports the step: a calling AE title (DIMSE) or a web user (MPPS-RS), and from where."""

    name: str
    address: str
    #: The N-CREATE/N-SET log lines say "MPPS N-CREATE"; the REST ones "MPPS-RS create".
    via: str = "MPPS"


@dataclass(frozen=True)
class MppsRefusal:
    """Why an MPPS create or update was refused: the DIMSE status and what to fix.

    ``keywords`` name the attributes at fault, ``error_id`` is the Error ID sent with
    0x0110; ``not_allowed`` marks an update of an attribute only a create may set
    (PS3.4 Table F.7.2-1), which MPPS-RS answers with 409 (PS3.18 15.5.3.1).
    """

    status: int
    comment: str
    keywords: tuple[str, ...] = ()
    error_id: int = 0
    not_allowed: bool = False

    def dataset(self, operation: str) -> Dataset:
        """The failure status Dataset of a DIMSE response."""
        # N-CREATE responses have no Attribute Identifier List (PS3.7 Table 10.3-2): the
        # Error Comment names the attribute instead.
        keywords = [k for k in self.keywords if k] if operation == "N-SET" else []
        return _failure(self.status, self.comment, keywords, self.error_id)


def _audit_mpps(
    session: Session,
    auditor: Auditor | None,
    caller: MppsCaller,
    attributes: Dataset,
    sop_instance_uid: str,
    action: str,
) -> None:
    """ATNA 110111 Procedure Record, in the transaction that stores the MPPS."""
    if auditor is None or not auditor.enabled:
        return
    if "PatientID" not in attributes:
        row = session.scalar(
            select(PerformedProcedureStep).where(
                PerformedProcedureStep.sop_instance_uid == sop_instance_uid
            )
        )
        if row is not None:
            attributes = Dataset.from_json(row.dataset_json)
    study_uid, accession = "", ""
    for item in attributes.get("ScheduledStepAttributesSequence", []):
        study_uid = study_uid or str(item.get("StudyInstanceUID", ""))
        accession = accession or str(item.get("AccessionNumber", ""))
    objects = [audit_messages.patient_object(str(attributes.get("PatientID", "")) or "-")]
    objects.append(
        audit_messages.study_object(study_uid or sop_instance_uid, [accession], [sop_instance_uid])
    )
    auditor.record(
        session,
        audit_messages.record(
            audit_messages.PROCEDURE_RECORD,
            action,
            auditor.source,
            audit_messages.Participant(caller.name, True, address=caller.address),
            objects,
        ),
    )


def create_mpps(
    attributes: Dataset,
    sop_instance_uid: str,
    caller: MppsCaller,
    session_factory: sessionmaker[Session],
    settings: Settings,
    auditor: Auditor | None = None,
) -> MppsOutcome | MppsRefusal:
    """Create a performed step: the one path of N-CREATE and of MPPS-RS Create.

    Checks the attribute list (PS3.4 F.7.2.1.2), stores the step, moves the linked
    scheduled steps on and queues the RIS events in one unit of work, audits it,
    logs and counts the outcome.
    """
    operation = "N-CREATE"
    try:
        # pydicom decodes the attribute list's elements on first access.
        step = performed_step_from_create(attributes, sop_instance_uid)
    except MppsAttributeError as exc:
        return _refuse(operation, caller, exc.status, exc.comment, exc.keywords)
    except _DECODE_ERRORS as exc:
        return _refuse(
            operation,
            caller,
            PROCESSING_FAILURE,
            f"the attribute list cannot be decoded: {type(exc).__name__}",
        )
    try:
        with session_factory.begin() as session:
            outcome = create_performed_step(
                session,
                step,
                step_status=step_status_table(settings.mpps_step_status),
                outbox_destination=_destination(settings),
            )
            _audit_mpps(session, auditor, caller, attributes, sop_instance_uid, "C")
    except DuplicateMppsError as exc:
        return _refuse(operation, caller, DUPLICATE_SOP_INSTANCE, exc.reason)
    except InvalidMppsError as exc:
        return _refuse(operation, caller, INVALID_ATTRIBUTE_VALUE, exc.reason, [exc.keyword])
    except SQLAlchemyError as exc:
        logger.error(
            "%s %s from %s: database failure: %s",
            caller.via,
            operation,
            caller.name,
            type(exc).__name__,
        )
        return _refuse(operation, caller, PROCESSING_FAILURE, "the database is unavailable")
    logger.info(
        "%s %s from %s: %s, %d scheduled step(s) linked, %d RIS event(s) queued",
        caller.via,
        operation,
        caller.name,
        outcome.status.value,
        outcome.linked_steps,
        outcome.events_queued,
    )
    metrics.mpps_answered(operation, outcome.status.value)
    if settings.log_phi:
        logger.debug("%s %s %s from %s", caller.via, operation, sop_instance_uid, caller.name)
    return outcome


def set_mpps(
    modifications: Dataset,
    sop_instance_uid: str,
    caller: MppsCaller,
    session_factory: sessionmaker[Session],
    settings: Settings,
    auditor: Auditor | None = None,
) -> MppsOutcome | MppsRefusal:
    """Update a performed step: the one path of N-SET and of MPPS-RS Update."""
    operation = "N-SET"
    try:
        change = performed_step_from_set(modifications, sop_instance_uid)
    except MppsAttributeError as exc:
        return _refuse(
            operation, caller, exc.status, exc.comment, exc.keywords, not_allowed=exc.not_allowed
        )
    except _DECODE_ERRORS as exc:
        return _refuse(
            operation,
            caller,
            PROCESSING_FAILURE,
            f"the modification list cannot be decoded: {type(exc).__name__}",
        )
    try:
        with session_factory.begin() as session:
            outcome = update_performed_step(
                session,
                change,
                step_status=step_status_table(settings.mpps_step_status),
                outbox_destination=_destination(settings),
            )
            _audit_mpps(session, auditor, caller, modifications, sop_instance_uid, "U")
    except UnknownMppsError as exc:
        return _refuse(operation, caller, NO_SUCH_SOP_INSTANCE, exc.reason)
    except MppsFinalError as exc:
        return _refuse(
            operation,
            caller,
            PROCESSING_FAILURE,
            exc.reason,
            error_id=ERROR_ID_MAY_NO_LONGER_BE_UPDATED,
        )
    except MppsIncompleteError as exc:
        return _refuse(operation, caller, MISSING_ATTRIBUTE_VALUE, exc.reason, [exc.keyword])
    except InvalidMppsError as exc:
        return _refuse(operation, caller, INVALID_ATTRIBUTE_VALUE, exc.reason, [exc.keyword])
    except SQLAlchemyError as exc:
        logger.error(
            "%s %s from %s: database failure: %s",
            caller.via,
            operation,
            caller.name,
            type(exc).__name__,
        )
        return _refuse(operation, caller, PROCESSING_FAILURE, "the database is unavailable")
    logger.info(
        "%s %s from %s: %s, %d scheduled step(s) changed, %d RIS event(s) queued",
        caller.via,
        operation,
        caller.name,
        outcome.status.value,
        outcome.steps_changed,
        outcome.events_queued,
    )
    metrics.mpps_answered(operation, outcome.status.value)
    return outcome


def _caller(request: DimseRequest) -> MppsCaller:
    requestor = request.requestor
    return MppsCaller(requestor.ae_title, requestor.address)


def handle_n_create(
    request: DimseRequest,
    session_factory: sessionmaker[Session],
    settings: Settings,
    auditor: Auditor | None = None,
) -> tuple[int | Dataset, Dataset | None]:
    """Answer an MPPS N-CREATE (PS3.4 F.7.2.1, IHE RAD-6 Modality Procedure Step In Progress).

    Parameters
    ----------
    request
        The N-CREATE request.
    session_factory
        A writer session factory: one unit of work stores the step, starts the
        scheduled steps and queues the RIS events.
    settings
        ``mpps_step_status`` and the RIS destination (``ris_host``/``ris_port``).
    auditor
        Records the step as an ATNA Procedure Record, in the same unit of work.

    Returns
    -------
    tuple
        ``(Success, attribute list)``, or a failure status Dataset and ``None``.
    """
    caller = _caller(request)
    uid = cast(N_CREATE, request.message).AffectedSOPInstanceUID
    # PS3.7 10.1.5.1.3: when the SCU gives no SOP Instance UID, the SCP assigns one
    # and returns it (the association layer moves it into the response).
    assigned = uid is None
    sop_instance_uid = str(uid) if uid is not None else generate_uid()
    try:
        attributes = request.dataset()
    except DatasetTooLargeError as exc:
        return _dimse_refusal("N-CREATE", _refuse("N-CREATE", caller, PROCESSING_FAILURE, str(exc)))
    except _DECODE_ERRORS as exc:
        return _dimse_refusal(
            "N-CREATE",
            _refuse(
                "N-CREATE",
                caller,
                PROCESSING_FAILURE,
                f"the attribute list cannot be decoded: {type(exc).__name__}",
            ),
        )
    result = create_mpps(attributes, sop_instance_uid, caller, session_factory, settings, auditor)
    if isinstance(result, MppsRefusal):
        return _dimse_refusal("N-CREATE", result)
    reply = Dataset()
    reply.update(attributes)
    if assigned:
        reply.AffectedSOPInstanceUID = sop_instance_uid
    return int(Status.SUCCESS), reply


def handle_n_set(
    request: DimseRequest,
    session_factory: sessionmaker[Session],
    settings: Settings,
    auditor: Auditor | None = None,
) -> tuple[int | Dataset, Dataset | None]:
    """Answer an MPPS N-SET (PS3.4 F.7.2.2, IHE RAD-7 Modality Procedure Step Completed).

    Parameters
    ----------
    request
        The N-SET request.
    session_factory, settings
        As for :func:`handle_n_create`.

    Returns
    -------
    tuple
        ``(Success, modification list)``, or a failure status Dataset and ``None``.
    """
    caller = _caller(request)
    sop_instance_uid = str(cast(N_SET, request.message).RequestedSOPInstanceUID or "")
    try:
        modifications = request.dataset()
    except DatasetTooLargeError as exc:
        return _dimse_refusal("N-SET", _refuse("N-SET", caller, PROCESSING_FAILURE, str(exc)))
    except _DECODE_ERRORS as exc:
        return _dimse_refusal(
            "N-SET",
            _refuse(
                "N-SET",
                caller,
                PROCESSING_FAILURE,
                f"the modification list cannot be decoded: {type(exc).__name__}",
            ),
        )
    result = set_mpps(modifications, sop_instance_uid, caller, session_factory, settings, auditor)
    if isinstance(result, MppsRefusal):
        return _dimse_refusal("N-SET", result)
    return int(Status.SUCCESS), modifications


def _dimse_refusal(operation: str, refusal: MppsRefusal) -> tuple[Dataset, None]:
    return refusal.dataset(operation), None


def _refuse(
    operation: str,
    caller: MppsCaller,
    status: int,
    comment: str,
    keywords: Iterable[str] = (),
    error_id: int = 0,
    *,
    not_allowed: bool = False,
) -> MppsRefusal:
    logger.warning(
        "%s %s from %s refused: 0x%04X %s", caller.via, operation, caller.name, status, comment
    )
    metrics.mpps_answered(operation, "refused")
    return MppsRefusal(status, comment, tuple(keywords), error_id, not_allowed)


__all__ = [
    "DUPLICATE_SOP_INSTANCE",
    "ERROR_ID_MAY_NO_LONGER_BE_UPDATED",
    "INVALID_ATTRIBUTE_VALUE",
    "MISSING_ATTRIBUTE",
    "MISSING_ATTRIBUTE_VALUE",
    "NO_SUCH_ATTRIBUTE",
    "NO_SUCH_SOP_INSTANCE",
    "PROCESSING_FAILURE",
    "MppsAttributeError",
    "MppsCaller",
    "MppsRefusal",
    "create_mpps",
    "handle_n_create",
    "handle_n_set",
    "performed_step_from_create",
    "performed_step_from_set",
    "set_mpps",
]
