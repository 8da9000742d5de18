"""ORM models: patients, requested procedures, scheduled procedure steps and the logs.

Column names are the DICOM keywords in snake_case; lengths follow the VR maximum
(LO 64, SH 16, AE 16, UI 64, PN 64 per component group).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mwl.domain import Code
from mwl.store.engine import Base

PN_LENGTH = 324  # three component groups of 64 plus separators


def _pattern_index(name: str, column: str) -> Index:
    """A B-tree index that also serves prefix wildcards, ``LIKE 'ABC%'``, on PostgreSQL.

    PostgreSQL uses an index for LIKE only under the C collation, or with the
    ``varchar_pattern_ops`` operator class, which still serves ``=`` (PostgreSQL
    manual, 11.10 "Operator Classes and Operator Families"). SQLite has no operator
    classes: there it is a plain index (its case-sensitive GLOB uses it as it is).
    """
    return Index(name, column, postgresql_ops={column: "varchar_pattern_ops"})


def utcnow() -> dt.datetime:
    """Naive UTC now: every log timestamp is stored in UTC without an offset."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def format_codes(codes: tuple[Code, ...]) -> str:
    """A code list as ``scheduled_protocol_codes`` stores it: ``value^scheme^meaning`` lines."""
    return "\n".join(f"{c.value}^{c.scheme}^{c.meaning}" for c in codes)


def parse_codes(text: str) -> tuple[Code, ...]:
    """Inverse of :func:`format_codes`."""
    codes = []
    for line in text.splitlines():
        value, scheme, meaning = (line.split("^", 2) + ["", ""])[:3]
        codes.append(Code(value, scheme, meaning))
    return tuple(codes)


class Patient(Base):
    """A patient as identified by the RIS: Patient ID within its issuer."""

    __tablename__ = "patient"
    __table_args__ = (
        UniqueConstraint("patient_id", "issuer_of_patient_id"),
        # Equality and prefix wildcards (LIKE 'ABC%') on one index (revision 0005).
        _pattern_index("ix_patient_patient_id", "patient_id"),
        _pattern_index("ix_patient_patient_name_key", "patient_name_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(PN_LENGTH), default="")
    # Case- and accent-folded name (mwl.worklist.names.name_search_key) for PN matching on an index.
    patient_name_key: Mapped[str] = mapped_column(String(PN_LENGTH), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    # Visit and patient medical values that patient messages carry (PV1, AL1); the
    # server defaults let rows older than these columns migrate (revision 0003).
    admission_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    current_patient_location: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Pregnancy Status (US) as text: "3" (pregnant) or "" (unknown).
    pregnancy_status: Mapped[str] = mapped_column(String(5), default="", server_default="")
    # Allergies (LO, VM 1-n): values separated by a backslash, as DICOM writes them.
    allergies: Mapped[str] = mapped_column(String(1024), default="", server_default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    procedures: Mapped[list[RequestedProcedure]] = relationship(back_populates="patient")


class RequestedProcedure(Base):
    """A requested procedure with its imaging service request: one study."""

    __tablename__ = "requested_procedure"
    __table_args__ = (
        _pattern_index("ix_requested_procedure_accession_number", "accession_number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_key: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(16), index=True)
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    requested_procedure_description: Mapped[str] = mapped_column(String(64), default="")
    requested_procedure_code_value: Mapped[str] = mapped_column(String(64), default="")
    requested_procedure_code_scheme: Mapped[str] = mapped_column(String(16), default="")
    requested_procedure_code_meaning: Mapped[str] = mapped_column(String(64), default="")
    requested_procedure_priority: Mapped[str] = mapped_column(String(16), default="")
    requesting_physician: Mapped[str] = mapped_column(String(PN_LENGTH), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(PN_LENGTH), default="")
    placer_order_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    filler_order_number: Mapped[str] = mapped_column(String(64), default="")
    sending_application: Mapped[str] = mapped_column(String(64), default="")
    sending_facility: Mapped[str] = mapped_column(String(64), default="")
    # Order details (revision 0003). Patient State, Medical Alerts, weight and size
    # are Patient module attributes, but each order states them (OBR-12, OBR-13, OBX):
    # kept with the order they came with, so a patient message never clears them.
    institution_name: Mapped[str] = mapped_column(String(64), default="", server_default="")
    institutional_department_name: Mapped[str] = mapped_column(
        String(64), default="", server_default=""
    )
    reason_for_the_requested_procedure: Mapped[str] = mapped_column(
        String(64), default="", server_default=""
    )
    # LT (up to 10240 characters): NTE-3 lines.
    requested_procedure_comments: Mapped[str] = mapped_column(Text, default="", server_default="")
    confidentiality_code: Mapped[str] = mapped_column(String(64), default="", server_default="")
    patient_transport_arrangements: Mapped[str] = mapped_column(
        String(64), default="", server_default=""
    )
    patient_state: Mapped[str] = mapped_column(String(64), default="", server_default="")
    medical_alerts: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # DS (16 characters): kilograms and metres.
    patient_weight: Mapped[str] = mapped_column(String(16), default="", server_default="")
    patient_size: Mapped[str] = mapped_column(String(16), default="", server_default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="procedures")
    steps: Mapped[list[ScheduledProcedureStep]] = relationship(
        back_populates="procedure", cascade="all, delete-orphan"
    )

    @property
    def requested_procedure_code(self) -> Code | None:
        """The Requested Procedure Code Sequence item, or None when the order had no code."""
        if not self.requested_procedure_code_value:
            return None
        return Code(
            self.requested_procedure_code_value,
            self.requested_procedure_code_scheme,
            self.requested_procedure_code_meaning,
        )


class ScheduledProcedureStep(Base):
    """One scheduled procedure step: one worklist item, identified by (study, SPS ID)."""

    __tablename__ = "scheduled_procedure_step"
    __table_args__ = (
        UniqueConstraint("procedure_key", "scheduled_procedure_step_id"),
        # The shapes modalities send: station or modality plus a date window.
        Index("ix_sps_station_start", "scheduled_station_ae_title", "start_datetime"),
        Index("ix_sps_modality_start", "modality", "start_datetime"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    procedure_key: Mapped[int] = mapped_column(
        ForeignKey("requested_procedure.id", ondelete="CASCADE"), index=True
    )
    scheduled_procedure_step_id: Mapped[str] = mapped_column(String(16))
    modality: Mapped[str] = mapped_column(String(16), default="")
    scheduled_station_ae_title: Mapped[str] = mapped_column(String(16), default="")
    scheduled_station_name: Mapped[str] = mapped_column(String(16), default="")
    scheduled_procedure_step_location: Mapped[str] = mapped_column(String(16), default="")
    # SPS Start Date and Time, matched together as one date-time (PS3.4 K.6-1).
    start_datetime: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    # HHMMSS, for queries that give a start time without a date.
    start_time: Mapped[str] = mapped_column(String(6), default="")
    scheduled_performing_physician_name: Mapped[str] = mapped_column(String(PN_LENGTH), default="")
    scheduled_procedure_step_description: Mapped[str] = mapped_column(String(64), default="")
    # Scheduled Protocol Code Sequence as "value^scheme^meaning" lines (one code per line):
    # only returned, never matched, so a column of its own per code would buy nothing.
    scheduled_protocol_codes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="SCHEDULED", index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    procedure: Mapped[RequestedProcedure] = relationship(back_populates="steps")


class Hl7Message(Base):
    """Every HL7 message received, stored before it is processed, with the ACK sent."""

    __tablename__ = "hl7_message"
    __table_args__ = (
        Index(
            "ix_hl7_message_sender_control_id",
            "sending_application",
            "sending_facility",
            "message_control_id",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    sending_application: Mapped[str] = mapped_column(String(227), default="")
    sending_facility: Mapped[str] = mapped_column(String(227), default="")
    message_control_id: Mapped[str] = mapped_column(String(199), default="")
    message_type: Mapped[str] = mapped_column(String(32), default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # RECEIVED until processed; then the ACK code sent (AA, AE, AR).
    outcome: Mapped[str] = mapped_column(String(16), default="RECEIVED", index=True)
    error: Mapped[str] = mapped_column(Text, default="")
    ack: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class QueryLogEntry(Base):
    """One C-FIND as a modality sent it and what it got."""

    __tablename__ = "query_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="", index=True)
    called_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    # The identifier as DICOM JSON: keys and values asked (patient data: kept in the
    # database, which holds it anyway, never in the log files).
    identifier_json: Mapped[str] = mapped_column(Text, default="")
    matches: Mapped[int] = mapped_column(Integer, default=0)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # The final status sent; Pending (0xFF00) when the answer ended without one.
    status: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    # completed, cancelled, aborted, released, connection lost, timed out, shutdown.
    ended: Mapped[str] = mapped_column(String(16), default="completed", server_default="completed")


class User(Base):
    """A person who may log in to the admin page."""

    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Set at login when the password fails today's policy (mwl.admin.passwords); the
    # web page then shows only the change-password form until a new one is set.
    must_change_password: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # Where the account logs in when not here: "oidc" or "ldap" (mwl.admin.external).
    # Such an account has no usable local password, and its role is the one the
    # provider's claim or the directory's groups gave at the last login. None: local.
    external_source: Mapped[str | None] = mapped_column(String(16), nullable=True, default=None)
    # Set by an admin on the users page (mwl.admin.users.set_disabled): the account
    # can neither log in nor use its API tokens, but its audit trail and tokens stay,
    # so enabling it again restores it as it was.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


# Which scheduled steps an MPPS performed (PS3.4 F.7.2.1: the Scheduled Step Attributes
# Sequence may name several). An MPPS without a row here is unscheduled. Deleting
# either side (retention, an order that drops a step) deletes the link only.
mpps_sps = Table(
    "mpps_sps",
    Base.metadata,
    Column(
        "mpps_key",
        ForeignKey("performed_procedure_step.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "sps_key",
        ForeignKey("scheduled_procedure_step.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)


class PerformedProcedureStep(Base):
    """A Modality Performed Procedure Step (PS3.4 Annex F) with its full attribute list."""

    __tablename__ = "performed_procedure_step"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    # Performed Procedure Step Status: IN PROGRESS, COMPLETED, DISCONTINUED.
    status: Mapped[str] = mapped_column(String(16), index=True)
    performed_station_ae_title: Mapped[str] = mapped_column(String(16), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    start_datetime: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    end_datetime: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # The attribute list as DICOM JSON (PS3.18 F.2), N-SET changes merged in.
    dataset_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow, index=True
    )

    steps: Mapped[list[ScheduledProcedureStep]] = relationship(secondary=mpps_sps)


class OutboxMessage(Base):
    """A status event for the RIS, written with the status change, sent until acknowledged.

    The sender takes, per ``order_key``, the oldest message not yet delivered, so the
    RIS hears about one order in the order things happened.
    """

    __tablename__ = "outbox_message"
    __table_args__ = (Index("ix_outbox_message_state_order", "state", "order_key", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # The requested procedure's Study Instance UID: one order (ORC-2/ORC-3) each.
    order_key: Mapped[str] = mapped_column(String(64))
    # StatusEvent as JSON (mwl.operations.outbox): what to render, kept if the order is purged.
    payload: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(128), default="")
    # PENDING until acknowledged with AA (DELIVERED), or set aside (FAILED) by policy.
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    rejects: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    ack_code: Mapped[str] = mapped_column(String(2), default="")
    ack: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class OutboxAttempt(Base):
    """One delivery attempt of an outbox message: when, the outcome and the ACK."""

    __tablename__ = "outbox_attempt"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_key: Mapped[int] = mapped_column(
        ForeignKey("outbox_message.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # AA, AE, AR, or ERROR (no connection, no ACK, garbled ACK).
    outcome: Mapped[str] = mapped_column(String(8))
    ack: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")


class AuditEvent(Base):
    """A change made by a person (web page or API): who, when, and before → after."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    # The user name, copied: the trail must outlive the account.
    username: Mapped[str] = mapped_column(String(64))
    # What was done, e.g. "edit", "reschedule", "cancel", "restore", "create",
    # "reprocess", "settings".
    action: Mapped[str] = mapped_column(String(32))
    # The step the change concerns; kept as a plain key (no foreign key) so that
    # retention purging the step leaves the trail readable.
    sps_key: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    # Study Instance UID, HL7 message key or setting name: what else identifies it.
    subject: Mapped[str] = mapped_column(String(128), default="", index=True)
    # JSON object {field: [before, after]}.
    changes: Mapped[str] = mapped_column(Text, default="{}")
    reason: Mapped[str] = mapped_column(String(255), default="")


class ApiToken(Base):
    """A bearer token for the JSON API, acting as its user; only its hash is stored."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_key: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    # SHA-256 of the token: tokens are long random strings, so a slow hash buys nothing.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class SettingOverride(Base):
    """A setting changed on the admin page; it takes precedence over file and environment."""

    __tablename__ = "setting_override"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The value as JSON, in the same form as the MWL_* variable takes it.
    value_json: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="")


class Hl7MessageLink(Base):
    """Which patient and requested procedure an HL7 message created or changed.

    Plain keys, no foreign keys to the patient and procedure: retention may purge an
    order while its messages are still kept, and the link then simply finds nothing.
    """

    __tablename__ = "hl7_message_link"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_key: Mapped[int] = mapped_column(
        ForeignKey("hl7_message.id", ondelete="CASCADE"), index=True
    )
    patient_key: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    procedure_key: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class WebSession(Base):
    """A login to the admin page; the browser holds only a random id, this row its hash.

    Ending a session is deleting its row: a copied cookie is worth nothing after
    logout, and every broker on the same database sees the end at once.
    """

    __tablename__ = "web_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    # SHA-256 of the id in the cookie (256 random bits: a slow hash buys nothing).
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_key: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Updated at a coarse resolution (mwl.admin.sessions), not on every request.
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LoginFailure(Base):
    """Failed logins counted per typed user name and per client address, for all brokers.

    ``key_hash`` is the SHA-256 of the user name or the address: a password typed
    into the user name field is not kept in clear.
    """

    __tablename__ = "login_failure"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # "user" or "address"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class AuditQueueMessage(Base):
    """A DICOM audit message (PS3.15 A.5) for the audit repository, queued with its event.

    Written in the transaction of the change it records, so the message exists
    exactly when the change does; the audit sender (mwl.audit.sender) deletes it
    once the syslog transport took it.
    """

    __tablename__ = "audit_queue"
    __table_args__ = (Index("ix_audit_queue_next_attempt", "next_attempt_at", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # The AuditMessage XML document, UTF-8, without the syslog header.
    message: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")


class WatchdogAlert(Base):
    """Something the watchdog noticed (mwl.operations.watchdog): firing, then resolved.

    One row per occurrence: when a condition comes back after it was resolved, a new
    row fires. ``notified`` is the state last told to e-mail and the webhook, so a
    notification that failed is sent again on the next round.
    """

    __tablename__ = "watchdog_alert"
    __table_args__ = (Index("ix_watchdog_alert_state", "state", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # What and whom it is about, e.g. "scanner_silent:CT01"; stable across rounds.
    key: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(64), default="")
    # English one-liner for e-mail, webhook and logs (no patient data: counts, AEs).
    summary: Mapped[str] = mapped_column(Text, default="")
    # JSON of the figures behind it, for the translated text on the page.
    details: Mapped[str] = mapped_column(Text, default="{}")
    state: Mapped[str] = mapped_column(String(16), default="firing")
    fired_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    notified: Mapped[str] = mapped_column(String(16), default="")
