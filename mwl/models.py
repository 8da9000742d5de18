"""ORM models: patients, requested procedures, scheduled procedure steps and the logs.

Column names are the DICOM keywords in snake_case; lengths follow the VR maximum
(LO 64, SH 16, AE 16, UI 64, PN 64 per component group).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mwl.db import Base

PN_LENGTH = 324  # three component groups of 64 plus separators


def utcnow() -> dt.datetime:
    """Naive UTC now: every log timestamp is stored in UTC without an offset."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Patient(Base):
    """A patient as identified by the RIS: Patient ID within its issuer."""

    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(PN_LENGTH), default="")
    # Case- and accent-folded name (mwl.names.name_search_key) for PN matching on an index.
    patient_name_key: Mapped[str] = mapped_column(String(PN_LENGTH), default="", index=True)
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    procedures: Mapped[list[RequestedProcedure]] = relationship(back_populates="patient")


class RequestedProcedure(Base):
    """A requested procedure with its imaging service request: one study."""

    __tablename__ = "requested_procedure"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_key: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(16), index=True)
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
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
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="procedures")
    steps: Mapped[list[ScheduledProcedureStep]] = relationship(
        back_populates="procedure", cascade="all, delete-orphan"
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
    scheduled_performing_physician_name: Mapped[str] = mapped_column(
        String(PN_LENGTH), default=""
    )
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
    status: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")


class User(Base):
    """A person who may log in to the admin page."""

    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
