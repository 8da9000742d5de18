"""The HL7 message log: every message as received, what became of it, the ACK sent.

A core service (no HL7 parsing here): the HL7 adapter records each message with its
outcome in the unit of work that applies it, or in one of its own when that fails, so
nothing a sender delivered is ever lost, and looks up the original ACK of a resent
message. Reading the log for people is mwl.operations.activity's job.
Functions take the unit of work's session first and never commit.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from mwl.store.models import Hl7Message, utcnow

RECEIVED = "RECEIVED"
# Column lengths of the log (mwl.store.models.Hl7Message): values are cut, never refused,
# because the log must take any message, however malformed its header.
_LENGTHS = {
    "peer_address": 64,
    "sending_application": 227,
    "sending_facility": 227,
    "message_control_id": 199,
    "message_type": 32,
}


# Built once: every message runs these, and building a statement costs more than
# running it (about 0.5 ms against 0.2 ms here, SQLAlchemy 2.1).
_OUTCOME_COLUMNS = ("outcome", "ack", "error", "processed_at")
_INSERT = insert(Hl7Message).returning(Hl7Message.id)
_UPDATE_OUTCOME = (
    update(Hl7Message)
    .where(Hl7Message.id == bindparam("key"))
    .values({name: bindparam(name) for name in _OUTCOME_COLUMNS})
)
_ORIGINAL_ACK = (
    select(Hl7Message.ack)
    .where(
        Hl7Message.sending_application == bindparam("application"),
        Hl7Message.sending_facility == bindparam("facility"),
        Hl7Message.message_control_id == bindparam("control_id"),
        Hl7Message.outcome == "AA",
        Hl7Message.ack.is_not(None),
    )
    .order_by(Hl7Message.id)
    .limit(1)
)


def _cut(name: str, value: str) -> str:
    # PostgreSQL text cannot hold NUL; a malformed header may contain one.
    return value.replace("\x00", "")[: _LENGTHS[name]]


def record_message(
    session: Session,
    raw: bytes,
    peer_address: str,
    *,
    sending_application: str = "",
    sending_facility: str = "",
    message_control_id: str = "",
    message_type: str = "",
    outcome: str,
    ack: bytes | None,
    error: str = "",
) -> int:
    """Store a message as it arrived, together with what became of it, in one statement.

    Parameters
    ----------
    session
        The unit of work; for an accepted message the same one that applied it, so the
        log never says AA for an order that was rolled back.
    raw
        The frame payload, byte for byte.
    peer_address
        ``host:port`` of the sender.
    sending_application, sending_facility, message_control_id
        MSH-3, MSH-4, MSH-10 as sent (the duplicate key).
    message_type
        MSH-9 (``ORM^O01``).
    outcome, ack, error
        As for :func:`record_outcome`; ``RECEIVED`` (and no ACK) for a message not
        processed yet.

    Returns
    -------
    int
        The message key.
    """
    row = {
        "raw": raw,
        "peer_address": _cut("peer_address", peer_address),
        "sending_application": _cut("sending_application", sending_application),
        "sending_facility": _cut("sending_facility", sending_facility),
        "message_control_id": _cut("message_control_id", message_control_id),
        "message_type": _cut("message_type", message_type),
        "received_at": utcnow(),
        **_outcome_values(outcome, ack, error),
    }
    key: int = session.connection().execute(_INSERT, row).scalar_one()
    return key


def _outcome_values(outcome: str, ack: bytes | None, error: str) -> dict[str, object]:
    return {
        "outcome": outcome[:16],
        "ack": ack,
        "error": error.replace("\x00", ""),
        "processed_at": None if outcome == RECEIVED else utcnow(),
    }


def record_outcome(
    session: Session, message_key: int, outcome: str, ack: bytes | None, error: str = ""
) -> None:
    """Record what became of a message: the ACK code sent, the ACK, the reason.

    Parameters
    ----------
    session
        The unit of work; for an accepted message the same one that applied it, so
        the log never says AA for an order that was rolled back.
    message_key
        From :func:`record_message`.
    outcome
        The ACK code (``AA``, ``AE``, ``AR``) or another short status.
    ack
        The ACK payload sent, or None when none could be sent.
    error
        Why it was not accepted (no patient data), or a note.
    """
    values = {"key": message_key, **_outcome_values(outcome, ack, error)}
    if not session.connection().execute(_UPDATE_OUTCOME, values).rowcount:
        raise KeyError(message_key)
    # The entry, if this unit of work holds it, reads the new values from now on.
    entry = session.identity_map.get(identity_key(Hl7Message, message_key))
    if entry is not None:
        session.expire(entry, list(_OUTCOME_COLUMNS))


def original_ack(
    session: Session, sending_application: str, sending_facility: str, message_control_id: str
) -> bytes | None:
    """The ACK sent for an earlier, accepted message with the same MSH-3/MSH-4/MSH-10.

    A sender that did not get our ACK (timeout, dropped connection) resends the
    message; it must get the same answer and the order must not be applied twice.
    Only accepted (AA) messages count: a message that was rejected may be resent
    after the sender fixed the cause.

    On PostgreSQL the unit of work holds a lock on this MSH-3/MSH-4/MSH-10 from here
    to its end, so a concurrent unit of work with the same message (on this broker or
    another) waits for it and then finds its ACK.

    Returns
    -------
    bytes or None
        The stored ACK, or None when there is no such message (or MSH-10 is empty).
    """
    if not message_control_id:
        return None
    key = {
        "application": _cut("sending_application", sending_application),
        "facility": _cut("sending_facility", sending_facility),
        "control_id": _cut("message_control_id", message_control_id),
    }
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # A RIS resending after a fail-over may reach two brokers with one message at
        # once. Without this both find no earlier ACK, both apply (the second as an
        # update) and each answers its own AA. The lock, held to the end of the unit
        # of work, makes the second wait for the first's commit and then find its
        # ACK. (SQLite has one writer at a time.)
        digest = hashlib.sha256(
            "\x1f".join(("mwl:hl7", *key.values())).encode("utf-8", "surrogateescape")
        ).digest()
        connection.execute(
            select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True)))
        )
    ack: bytes | None = connection.execute(_ORIGINAL_ACK, key).scalar()
    return ack
