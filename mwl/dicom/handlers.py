"""pynetdicom event handlers: C-ECHO and Modality Worklist C-FIND (translate, find, yield)."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.events import Event
from pynetdicom.status import Status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings, current_settings
from mwl.config import Settings
from mwl.dicom.pending import PendingSender
from mwl.dicom.profiles import profile_for
from mwl.dicom.query import parse_identifier
from mwl.dicom.response import ResponseBuilder
from mwl.errors import InvalidQueryError
from mwl.operations.querylog import QueryRecord, record_query
from mwl.worklist.matching import find_items

logger = logging.getLogger(__name__)

# C-FIND statuses of the Modality Worklist SOP Class, PS3.4 K.4.1.1.4 Table K.4-1
# (the general C-FIND table is C.4.1.1.4). pynetdicom names only Success, Pending
# and Cancel; the others are named here.
#: Failure: Identifier does not match SOP Class (a malformed or impossible query).
FAILURE_IDENTIFIER_DOES_NOT_MATCH = 0xA900
#: Failure: Unable to process (0xC000-0xCFFF); used when the database fails.
FAILURE_UNABLE_TO_PROCESS = 0xC001
#: Pending: matches are continuing, one or more optional keys were not supported.
PENDING_OPTIONAL_KEYS_NOT_SUPPORTED = 0xFF01
#: Refused: Not Authorized (PS3.7 C.5.x general status): a listed AE from another host.
REFUSED_NOT_AUTHORIZED = 0x0124

_ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO
# What pydicom raises on bytes it cannot parse (it decodes lazily, on first access).
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, EOFError, struct.error)


def handle_echo(event: Event) -> int:
    """Answer a C-ECHO (Verification, PS3.4 A.4) with Success.

    Parameters
    ----------
    event
        The ``EVT_C_ECHO`` event.

    Returns
    -------
    int
        ``Status.SUCCESS``.
    """
    return int(Status.SUCCESS)


@dataclass
class _Outcome:
    status: int = int(Status.SUCCESS)
    matches: int = 0
    error: str = ""


def handle_find(
    event: Event, session_factory: sessionmaker[Session], settings: Settings | LiveSettings
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Answer a Modality Worklist C-FIND (PS3.4 K.4.1.3.1 SCP behaviour).

    The query runs and its session closes before the first response is yielded,
    so a slow modality never holds a database transaction. Every C-FIND is
    written to the query log (:mod:`mwl.operations.querylog`) once it ends.

    Parameters
    ----------
    event
        The ``EVT_C_FIND`` event.
    session_factory
        Makes the units of work: one to read the worklist, one to log the query.
    settings
        The broker's settings, or :class:`~mwl.admin.overrides.LiveSettings` to follow
        changes made on the admin page (calling-AE profiles: response character set,
        station coercion, date window, statuses, match limit).

    Yields
    ------
    tuple
        ``(status, identifier)``: Pending with a response Identifier per match,
        then nothing (pynetdicom then sends Success); or a failure or Cancel
        status with ``None``, after which the handler returns.
    """
    started = time.perf_counter()
    # Read once per C-FIND: one query sees one consistent policy.
    settings = current_settings(settings)
    assoc = event.assoc
    calling = assoc.requestor.ae_title
    peer_host = assoc.requestor.address
    peer = f"{peer_host}:{assoc.requestor.port}"
    profile = profile_for(settings, calling, peer_host)
    outcome = _Outcome()
    identifier_json = ""
    try:
        if settings.dicom_restrict_calling_ae and not profile.known:
            # The AE title passed the association check (require_calling_aet) but
            # its profile names another host.
            outcome.status = REFUSED_NOT_AUTHORIZED
            outcome.error = "calling AE not allowed from this host"
            yield _failure(outcome.status, outcome.error), None
            return
        try:
            identifier = event.identifier
            # Serialising decodes every element, so a garbled Identifier fails here.
            identifier_json = identifier.to_json()
        except _DECODE_ERRORS as exc:
            logger.warning(
                "C-FIND from %s (%s): undecodable identifier (%s)",
                calling,
                peer,
                type(exc).__name__,
            )
            outcome.status = FAILURE_IDENTIFIER_DOES_NOT_MATCH
            outcome.error = f"identifier cannot be decoded: {type(exc).__name__}"
            yield _failure(outcome.status, "the Identifier cannot be decoded"), None
            return
        try:
            parsed = parse_identifier(identifier, limit=profile.max_matches)
            query = profile.apply(parsed.query, calling)
        except InvalidQueryError as exc:
            outcome.status = FAILURE_IDENTIFIER_DOES_NOT_MATCH
            outcome.error = exc.reason
            yield _failure(outcome.status, exc.reason, exc.offending_keyword), None
            return
        try:
            with session_factory() as session:
                items = find_items(session, query)
        except SQLAlchemyError as exc:
            logger.error("C-FIND from %s (%s): the worklist query failed: %s", calling, peer, exc)
            outcome.status = FAILURE_UNABLE_TO_PROCESS
            outcome.error = f"database error: {type(exc).__name__}"
            yield _failure(outcome.status, "the worklist database is unavailable"), None
            return
        pending = PENDING_OPTIONAL_KEYS_NOT_SUPPORTED if parsed.unsupported_keys else Status.PENDING
        builder = ResponseBuilder(identifier, profile.charset)
        sender = _pending_sender(event, int(pending), builder, settings)
        for item in items:
            # C-CANCEL between responses (PS3.4 K.4.1.3.1, C.4.1.3.1): stop at once.
            if event.is_cancelled:
                outcome.status = int(Status.CANCEL)
                yield int(Status.CANCEL), None
                return
            if sender is None:
                yield int(pending), builder.build(item)
            elif not sender.send(builder.encode(item, sender.transfer_syntax)):
                return  # the association ended
            outcome.matches += 1
        if event.is_cancelled:
            outcome.status = int(Status.CANCEL)
            yield int(Status.CANCEL), None
            return
    finally:
        _finish(session_factory, settings, event, peer, identifier_json, outcome, started)


def _finish(
    session_factory: sessionmaker[Session],
    settings: Settings,
    event: Event,
    peer: str,
    identifier_json: str,
    outcome: _Outcome,
    started: float,
) -> None:
    duration_ms = (time.perf_counter() - started) * 1000
    calling = event.assoc.requestor.ae_title
    # AE titles, peer and counts only: the identifier is patient data (DEBUG, opt-in).
    logger.info(
        "C-FIND from %s (%s) to %s: %d matches, status 0x%04X, %.1f ms",
        calling,
        peer,
        event.assoc.acceptor.ae_title,
        outcome.matches,
        outcome.status,
        duration_ms,
    )
    if settings.log_phi:
        logger.debug("C-FIND identifier from %s: %s", calling, identifier_json)
    record = QueryRecord(
        calling_ae_title=calling,
        called_ae_title=event.assoc.acceptor.ae_title,
        peer_address=peer,
        identifier_json=identifier_json,
        matches=outcome.matches,
        duration_ms=round(duration_ms, 3),
        status=outcome.status,
        error=outcome.error,
    )
    try:
        with session_factory.begin() as session:
            record_query(session, record)
    except SQLAlchemyError as exc:
        # The modality already has its answer; a lost log row must not fail the query.
        logger.error("could not write the query log for %s (%s): %s", calling, peer, exc)


def _pending_sender(
    event: Event, status: int, builder: ResponseBuilder, settings: Settings
) -> PendingSender | None:
    """The fast way to send the Pending responses, or None for pynetdicom's own.

    pynetdicom's way stays for what :meth:`ResponseBuilder.encode` does not write
    (Deflated and Big Endian transfer syntaxes, an empty Identifier) and with
    ``log_phi``, where pynetdicom logs each response Identifier at DEBUG.
    """
    if settings.log_phi or builder.empty or not builder.writes(event.context.transfer_syntax):
        return None
    return PendingSender(event, status)


def _failure(status: int, comment: str, offending_keyword: str = "") -> Dataset:
    """A failure status Dataset with Error Comment and Offending Element (PS3.7 C.4.2.1.4)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:_ERROR_COMMENT_LENGTH]
    tag = tag_for_keyword(offending_keyword) if offending_keyword else None
    if tag is not None:
        ds.OffendingElement = [tag]
    return ds


__all__ = [
    "FAILURE_IDENTIFIER_DOES_NOT_MATCH",
    "FAILURE_UNABLE_TO_PROCESS",
    "PENDING_OPTIONAL_KEYS_NOT_SUPPORTED",
    "REFUSED_NOT_AUTHORIZED",
    "handle_echo",
    "handle_find",
]
