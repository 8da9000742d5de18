"""Run a rejected HL7 message from the log through the mapping again, after a settings fix.

The message goes through the listener's own path (:class:`mwl.hl7.intake.MessageProcessor`:
sender check, parse, apply, message links) with the settings as they are now, in one
writer transaction that also records the new outcome and an audit event. Nothing is
sent to the sender: the ACK it got stays in the log as it was sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.hl7.grammar import safe_header
from mwl.hl7.intake import MessageProcessor, rejection, retrying_write_conflicts
from mwl.operations.audit import record_event
from mwl.operations.message_view import (
    REPROCESS_ACTION,
    REPROCESSABLE_OUTCOMES,
    ReprocessOutcome,
    ReprocessRefusal,
    reprocess_subject,
)
from mwl.operations.messages import RECEIVED, original_ack, record_outcome
from mwl.store.models import Hl7Message

logger = logging.getLogger(__name__)

# Settings as they are, or a function returning the current ones (when the admin
# page can change them while the broker runs).
SettingsSource = Settings | Callable[[], Settings]


def reprocess_message(
    settings: SettingsSource,
    session_factory: sessionmaker[Session],
    key: int,
    username: str,
) -> ReprocessOutcome:
    """Apply a logged message that was answered AE or AR, with the current settings.

    Parameters
    ----------
    settings
        The broker's settings, or a function returning them as they are now.
    session_factory
        A writer session factory; the whole re-run is one unit of work.
    key
        The message's key in the log.
    username
        Who asked, for the audit trail.

    Returns
    -------
    ReprocessOutcome
        The new outcome (AA, or AE/AR with the new error), or a refusal when the
        message is unknown, was accepted, is still in progress, was resent and
        accepted since, or the database failed; a refusal changes nothing.

    Raises
    ------
    SettingsError
        When the settings name an unknown ``hl7_default_charset``.
    """
    current = settings() if callable(settings) else settings
    processor = MessageProcessor(current)

    def unit_of_work() -> ReprocessOutcome:
        with session_factory.begin() as session:
            return _reprocess(session, processor, key, username)

    try:
        # Two editors' re-runs, or a re-run and the listener, may race for a new
        # patient's unique key on PostgreSQL; the loser starts over and finds the
        # winner's row.
        return retrying_write_conflicts(unit_of_work, f"re-processing log entry {key}")
    except SQLAlchemyError as exc:
        logger.error(
            "HL7 message log entry %d not re-processed: database error (%s)",
            key,
            type(exc).__name__,
        )
    return ReprocessOutcome(key, "", "", refusal=ReprocessRefusal.DATABASE)


def _reprocess(
    session: Session, processor: MessageProcessor, key: int, username: str
) -> ReprocessOutcome:
    # Locked, so that two clicks on the button apply the message once.
    message = session.get(Hl7Message, key, with_for_update=True)
    if message is None:
        return ReprocessOutcome(key, "", "", refusal=ReprocessRefusal.NOT_FOUND)
    before, error_before = message.outcome, message.error
    if before not in REPROCESSABLE_OUTCOMES:
        refusal = (
            ReprocessRefusal.IN_PROGRESS if before == RECEIVED else ReprocessRefusal.NOT_REJECTED
        )
        return _refused(message, refusal)
    header = safe_header(message.raw, processor.settings.hl7_default_charset)
    control_id = header.message_control_id if header else ""
    if header is not None and original_ack(
        session, header.sending_application, header.sending_facility, control_id
    ):
        # The sender fixed and resent it, and that copy was applied: applying this
        # one as well could undo a later change of the same order.
        return _refused(message, ReprocessRefusal.RESEND_ACCEPTED)

    summary = ""
    try:
        if header is not None:
            processor.check_sender(header)
        parsed = processor.parse(message.raw, header)
        # A failure rolls back what the message changed, not the new outcome below.
        with session.begin_nested():
            summary = processor.apply(session, parsed, key)
        after, error_after = "AA", ""
    except DataError as exc:
        failed = rejection(exc, control_id, "re-processing")
        after, error_after = failed.ack_code, str(failed)
    except SQLAlchemyError:
        raise  # the database, not the message: change nothing (see reprocess_message)
    except Exception as exc:
        failed = rejection(exc, control_id, "re-processing")
        after, error_after = failed.ack_code, str(failed)

    # The ACK stays the one the sender got: the log records what was sent.
    record_outcome(session, key, after, message.ack, error_after)
    record_event(
        session,
        username,
        REPROCESS_ACTION,
        subject=reprocess_subject(key),
        changes={"outcome": (before, after), "error": (error_before, error_after)},
    )
    logger.info(
        "HL7 message %s (log entry %d) re-processed by %s: %s -> %s%s",
        control_id or "-",
        key,
        username,
        before,
        after,
        f" ({summary})" if summary else "",
    )
    return ReprocessOutcome(
        key=key,
        outcome_before=before,
        outcome_after=after,
        error_before=error_before,
        error_after=message.error,
        summary=summary,
    )


def _refused(message: Hl7Message, refusal: ReprocessRefusal) -> ReprocessOutcome:
    return ReprocessOutcome(
        key=message.id,
        outcome_before=message.outcome,
        outcome_after=message.outcome,
        error_before=message.error,
        error_after=message.error,
        refusal=refusal,
    )
