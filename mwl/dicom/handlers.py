"""DIMSE handlers of the worklist SCP: C-ECHO and Modality Worklist C-FIND (find, stream).

Thin: the C-FIND goes through the shared pipeline (:mod:`mwl.dicom.find`) and
answers with a :class:`~mwl.dicom.net.service.FindAnswer` whose Identifiers are
encoded lazily while the association layer sends them. Every C-FIND is written to
the log and the query log once it ends, however it ends (completed, cancelled,
aborted), with the matches actually sent.
"""

from __future__ import annotations

import functools
import logging
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pynetdicom.status import Status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings, current_settings
from mwl.audit import messages as audit_messages
from mwl.audit.auditor import Auditor
from mwl.config import DicomAeProfile, Settings
from mwl.dicom.find import (
    FAILURE_IDENTIFIER_DOES_NOT_MATCH,
    FAILURE_UNABLE_TO_PROCESS,
    PENDING_OPTIONAL_KEYS_NOT_SUPPORTED,
    REFUSED_NOT_AUTHORIZED,
    FindFailure,
    FindPlan,
    find_matches,
    plan_find,
)
from mwl.dicom.net.messages import DatasetTooLargeError, encode_data_set
from mwl.dicom.net.service import AnswerEnd, DimseRequest, FindAnswer
from mwl.operations import metrics
from mwl.operations.querylog import QueryRecord, record_query
from mwl.worklist.matching import StoredItem

logger = logging.getLogger(__name__)

# What pydicom raises on bytes it cannot parse (it decodes lazily, on first access).
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, EOFError, struct.error)


@functools.cache
def _configured_titles(profiles: tuple[DicomAeProfile, ...]) -> frozenset[str]:
    return frozenset(profile.ae_title for profile in profiles)


def _profile_titles(settings: Settings) -> frozenset[str]:
    """The calling AE titles the metrics name: those of ``dicom_ae_profiles``."""
    return _configured_titles(settings.dicom_ae_profiles)


def handle_echo(request: DimseRequest) -> int:
    """Answer a C-ECHO (Verification, PS3.4 A.4) with Success."""
    return int(Status.SUCCESS)


@dataclass
class _Query:
    """One C-FIND as the logs record it."""

    request: DimseRequest
    settings: Settings
    session_factory: sessionmaker[Session]
    started: float
    identifier_json: str = ""
    error: str = ""
    auditor: Auditor | None = None

    @property
    def peer(self) -> str:
        requestor = self.request.requestor
        return f"{requestor.address}:{requestor.port}"

    def failed(self, failure: FindFailure, error: str = "") -> FindAnswer:
        """Answer with ``failure``; the logs get ``error`` (default: its comment)."""
        self.error = error or failure.comment
        status = failure.status if failure.status is not None else REFUSED_NOT_AUTHORIZED
        failure = FindFailure(status, failure.comment, failure.offending_keyword)
        return FindAnswer(status=status, status_dataset=failure.status_dataset(), on_end=self.ended)

    def ended(self, end: AnswerEnd) -> None:
        """Log the query and write its query-log row (the layer calls this once)."""
        duration_ms = (time.perf_counter() - self.started) * 1000
        requestor = self.request.requestor
        # The last status sent: Pending when the answer ended without a final one (the
        # peer aborted or reset, or the broker dropped it: timeout, shutdown).
        status = end.status if end.status is not None else int(Status.PENDING)
        metrics.cfind_answered(
            metrics.bounded(requestor.ae_title, _profile_titles(self.settings)),
            status,
            duration_ms / 1000,
            end.matches,
        )
        # AE titles, peer and counts only: the identifier is patient data (DEBUG, opt-in).
        logger.info(
            "C-FIND from %s (%s) to %s: %d matches, status 0x%04X, %s, %.1f ms",
            requestor.ae_title,
            self.peer,
            requestor.called_ae_title,
            end.matches,
            status,
            end.reason,
            duration_ms,
        )
        if self.settings.log_phi:
            logger.debug("C-FIND identifier from %s: %s", requestor.ae_title, self.identifier_json)
        record = QueryRecord(
            calling_ae_title=requestor.ae_title,
            called_ae_title=requestor.called_ae_title,
            peer_address=self.peer,
            identifier_json=self.identifier_json,
            matches=end.matches,
            duration_ms=round(duration_ms, 3),
            status=status,
            error=self.error,
            ended=end.reason,
        )
        try:
            with self.session_factory.begin() as session:
                record_query(session, record)
                self._audit(session, status, end.matches)
        except SQLAlchemyError as exc:
            # The modality already has its answer; a lost log row must not fail the query.
            logger.error(
                "could not write the query log for %s (%s): %s", requestor.ae_title, self.peer, exc
            )

    def _audit(self, session: Session, status: int, matches: int) -> None:
        # ATNA 110112 Query, in the query log's transaction (no commit of its own).
        if self.auditor is None or not self.auditor.enabled:
            return
        requestor = self.request.requestor
        self.auditor.record(
            session,
            audit_messages.query(
                self.auditor.source,
                requestor.ae_title,
                requestor.address,
                self.request.data or b"",
                self.request.context.transfer_syntax,
                matches,
                outcome=audit_messages.SUCCESS
                if status in {0x0000, 0xFF00, 0xFF01, 0xFE00}
                else audit_messages.MINOR_FAILURE,
            ),
        )


def handle_find(
    request: DimseRequest,
    session_factory: sessionmaker[Session],
    settings: Settings | LiveSettings,
    auditor: Auditor | None = None,
) -> FindAnswer:
    """Answer a Modality Worklist C-FIND (PS3.4 K.4.1.3.1 SCP behaviour).

    The query runs and its session closes before the first response is written,
    so a slow modality never holds a database transaction.

    Parameters
    ----------
    request
        The C-FIND request.
    session_factory
        Makes the units of work: one to read the worklist, one to log the query.
    settings
        The broker's settings, or :class:`~mwl.admin.overrides.LiveSettings` to follow
        changes made on the admin page (calling-AE profiles: response character set,
        station coercion, date window, statuses, match limit).
    auditor
        Records each C-FIND as an ATNA Query message (with the query log row).

    Returns
    -------
    FindAnswer
        The matches' Identifiers (encoded as they are sent), or a failure status
        with Error Comment (and Offending Element when one key is at fault).
    """
    # Read once per C-FIND: one query sees one consistent policy.
    policy = current_settings(settings)
    query = _Query(request, policy, session_factory, time.perf_counter(), auditor=auditor)
    requestor = request.requestor
    try:
        identifier = request.dataset()
        # Serialising decodes every element, so a garbled Identifier fails here.
        query.identifier_json = identifier.to_json()
    except DatasetTooLargeError as exc:
        logger.warning(
            "C-FIND from %s (%s): identifier over %d bytes",
            requestor.ae_title,
            query.peer,
            exc.limit,
        )
        comment = f"Identifier larger than {exc.limit} bytes"
        return query.failed(FindFailure(FAILURE_IDENTIFIER_DOES_NOT_MATCH, comment))
    except _DECODE_ERRORS as exc:
        logger.warning(
            "C-FIND from %s (%s): undecodable identifier (%s)",
            requestor.ae_title,
            query.peer,
            type(exc).__name__,
        )
        failure = FindFailure(FAILURE_IDENTIFIER_DOES_NOT_MATCH, "the Identifier cannot be decoded")
        return query.failed(failure, f"identifier cannot be decoded: {type(exc).__name__}")
    plan = plan_find(policy, requestor.ae_title, requestor.address, identifier)
    if isinstance(plan, FindFailure):
        return query.failed(plan)
    if plan.parsed.ignored:
        # The keys only (their values may be patient data): the query log has the rest.
        query.error = plan.parsed.warning()
        logger.info(
            "C-FIND from %s (%s): keys ignored for matching: %s",
            requestor.ae_title,
            query.peer,
            ", ".join(plan.parsed.unsupported_keys),
        )
    items = find_matches(session_factory, plan.query)
    if isinstance(items, FindFailure):
        logger.error(
            "C-FIND from %s (%s): the worklist query failed", requestor.ae_title, query.peer
        )
        return query.failed(items, "database error")
    return FindAnswer(
        identifiers=_encoded(plan, items, request.context.transfer_syntax),
        pending_status=plan.pending_status,
        on_end=query.ended,
    )


def _encoded(plan: FindPlan, items: list[StoredItem], transfer_syntax: str) -> Iterator[bytes]:
    """Each item's response Identifier, encoded when the layer asks for the next one.

    Little endian Identifiers are written directly (the hot path); Deflated and Big
    Endian ones are built as Datasets and encoded by pydicom.
    """
    builder = plan.builder
    if builder.writes(transfer_syntax):
        for item in items:
            yield builder.encode(item, transfer_syntax)
    else:
        for item in items:
            yield encode_data_set(builder.build(item.item), transfer_syntax)


__all__ = [
    "FAILURE_IDENTIFIER_DOES_NOT_MATCH",
    "FAILURE_UNABLE_TO_PROCESS",
    "PENDING_OPTIONAL_KEYS_NOT_SUPPORTED",
    "REFUSED_NOT_AUTHORIZED",
    "handle_echo",
    "handle_find",
]
