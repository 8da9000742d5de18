"""Run HL7 messages from the log through the mapping again, after a settings or rule fix.

Two ways: :func:`reprocess_message` re-runs one rejected (AE/AR) message; the chain
functions (:func:`preview_chain`, :func:`apply_chain`) re-run any message and every
later message of the same order (same placer or filler order number or accession
number), in their order, so that an older message never overwrites a newer change;
a preview shows the before -> after of the order's steps first.

The message goes through the listener's own path (:class:`mwl.hl7.intake.MessageProcessor`:
sender check, parse, apply, message links) with the settings as they are now, in one
writer transaction that also records the new outcome and an audit event. Nothing is
sent to the sender: the ACK it got stays in the log as it was sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.domain import Order
from mwl.hl7.grammar import safe_header
from mwl.hl7.intake import MessageProcessor, rejection, retrying_write_conflicts
from mwl.operations.audit import record_event
from mwl.operations.message_view import (
    REPROCESS_ACTION,
    REPROCESSABLE_OUTCOMES,
    ChainMessage,
    ChainPlan,
    ChainRefusal,
    ReprocessOutcome,
    ReprocessRefusal,
    reprocess_subject,
)
from mwl.operations.messages import RECEIVED, original_ack, record_outcome
from mwl.orders.replay import OrderIdentity, differences, fingerprint, snapshot
from mwl.store.models import Hl7Message, Hl7MessageLink

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


# --------------------------------------------------------------------------- chains

# Later messages looked at for the same order; older orders are rarely amended
# after this many further messages, and the preview says how many it read.
CHAIN_LOOKAHEAD = 5000
_ORDER_TYPES = ("ORM", "OMI")


class ChainRunner:
    """:func:`preview_chain` and :func:`apply_chain` with the settings and sessions bound.

    What the composition root lends the web page (``web.store.ChainReprocessor``).
    """

    def __init__(self, settings: SettingsSource, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory

    def preview(self, key: int) -> ChainPlan:
        """See :func:`preview_chain`."""
        return preview_chain(self.settings, self.session_factory, key)

    def apply(self, key: int, username: str, expected: str) -> ChainPlan:
        """See :func:`apply_chain`."""
        return apply_chain(self.settings, self.session_factory, key, username, expected)


class _Preview(Exception):
    """Raised at the end of a preview so that its unit of work rolls back."""

    def __init__(self, plan: ChainPlan) -> None:
        self.plan = plan
        super().__init__("preview")


def preview_chain(
    settings: SettingsSource, session_factory: sessionmaker[Session], key: int
) -> ChainPlan:
    """What re-running message ``key`` and every later message of its order would do.

    The messages are applied in their order in one transaction that is rolled back:
    the plan holds each message's new outcome and each step's before -> after, and
    nothing is stored.
    """
    return _run_chain(settings, session_factory, key, username=None, expected="")


def apply_chain(
    settings: SettingsSource,
    session_factory: sessionmaker[Session],
    key: int,
    username: str,
    expected: str,
) -> ChainPlan:
    """Re-run message ``key`` and every later message of the same order, and keep it.

    ``expected`` is the preview's fingerprint: when the order or the chain changed
    since (a new message arrived, someone edited a step), nothing is applied and the
    plan says ``ChainRefusal.CHANGED``, so the user looks at the new difference.
    Each message gets its new outcome (its ACK stays the one sent) and an audit event.
    """
    return _run_chain(settings, session_factory, key, username=username, expected=expected)


def _run_chain(
    settings: SettingsSource,
    session_factory: sessionmaker[Session],
    key: int,
    *,
    username: str | None,
    expected: str,
) -> ChainPlan:
    current = settings() if callable(settings) else settings
    processor = MessageProcessor(current)

    def unit_of_work() -> ChainPlan:
        try:
            with session_factory.begin() as session:
                plan = _chain(session, processor, key, username, expected)
                if username is None or not plan.applied:
                    raise _Preview(plan)
                return plan
        except _Preview as preview:
            return preview.plan

    try:
        return retrying_write_conflicts(unit_of_work, f"re-running log entry {key}")
    except SQLAlchemyError as exc:
        logger.error(
            "HL7 message log entry %d: chain not re-run: database error (%s)",
            key,
            type(exc).__name__,
        )
    return ChainPlan(key, refusal=ChainRefusal.DATABASE)


def _parsed_order(processor: MessageProcessor, message: Hl7Message) -> Order | None:
    header = safe_header(message.raw, processor.settings.hl7_default_charset)
    try:
        parsed = processor.parse(message.raw, header)
    except Exception:  # noqa: BLE001 - a message that does not parse names no order
        return None
    return parsed if isinstance(parsed, Order) else None


def _later_of_order(
    session: Session, processor: MessageProcessor, first: Hl7Message, identity: OrderIdentity
) -> list[Hl7Message]:
    """The later order messages naming the same order, oldest first."""
    if not identity:
        return []
    later = session.scalars(
        select(Hl7Message)
        .where(
            Hl7Message.id > first.id,
            Hl7Message.outcome != RECEIVED,
            or_(*(Hl7Message.message_type.startswith(t) for t in _ORDER_TYPES)),
        )
        .order_by(Hl7Message.id)
        .limit(CHAIN_LOOKAHEAD)
    ).all()
    chain = []
    for message in later:
        order = _parsed_order(processor, message)
        if order is not None and identity.shares(order):
            identity.add(order)
            chain.append(message)
    return chain


def _chain(
    session: Session,
    processor: MessageProcessor,
    key: int,
    username: str | None,
    expected: str,
) -> ChainPlan:
    first = session.get(Hl7Message, key, with_for_update=username is not None)
    if first is None:
        return ChainPlan(key, refusal=ChainRefusal.NOT_FOUND)
    if first.outcome == RECEIVED:
        return ChainPlan(key, refusal=ChainRefusal.IN_PROGRESS)
    order = _parsed_order(processor, first)
    identity = OrderIdentity.of(order) if order is not None else OrderIdentity()
    chain = [first, *_later_of_order(session, processor, first, identity)]
    before = snapshot(session, identity)
    print_ = fingerprint(before, (m.id for m in chain))
    if username is not None and print_ != expected:
        return ChainPlan(key, fingerprint=print_, refusal=ChainRefusal.CHANGED)
    results = [_rerun(session, processor, message, username) for message in chain]
    after = snapshot(session, identity)
    if username is not None:
        logger.info(
            "HL7 log entry %d and %d later message(s) of its order re-run by %s",
            key,
            len(chain) - 1,
            username,
        )
    return ChainPlan(
        key,
        messages=tuple(results),
        differences=differences(before, after),
        fingerprint=print_,
        applied=username is not None,
        order_keys=identity.names(),
    )


def _rerun(
    session: Session, processor: MessageProcessor, message: Hl7Message, username: str | None
) -> ChainMessage:
    """Apply one message of the chain again; record its new outcome (and, applying, why)."""
    header = safe_header(message.raw, processor.settings.hl7_default_charset)
    control_id = header.message_control_id if header else ""
    before, error_before = message.outcome, message.error
    # Its old links go: the re-run links what it changes now.
    session.execute(delete(Hl7MessageLink).where(Hl7MessageLink.message_key == message.id))
    try:
        if header is not None:
            processor.check_sender(header)
        parsed = processor.parse(message.raw, header)
        with session.begin_nested():
            processor.apply(session, parsed, message.id)
        after, error_after = "AA", ""
    except SQLAlchemyError as exc:
        if not isinstance(exc, DataError):
            raise
        failed = rejection(exc, control_id, "re-processing")
        after, error_after = failed.ack_code, str(failed)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the message's outcome
        failed = rejection(exc, control_id, "re-processing")
        after, error_after = failed.ack_code, str(failed)
    record_outcome(session, message.id, after, message.ack, error_after)
    if username is not None:
        record_event(
            session,
            username,
            REPROCESS_ACTION,
            subject=reprocess_subject(message.id),
            changes={"outcome": (before, after), "error": (error_before, error_after)},
        )
    return ChainMessage(
        key=message.id,
        message_control_id=message.message_control_id,
        message_type=message.message_type,
        received_at=message.received_at,
        outcome_before=before,
        outcome_after=after,
        error_after=error_after,
    )
