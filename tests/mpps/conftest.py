"""MPPS test fixtures: a worklist, a broker (SCP + RIS sender), a test RIS, SCU helpers."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.dicom.scp import WorklistScp
from mwl.domain import Code, Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.hl7.mllp import MllpFramer, frame
from mwl.hl7.sender import OutboxSender
from mwl.orders.apply import apply_order
from mwl.store.engine import make_session_factory
from mwl.store.models import OutboxMessage, ScheduledProcedureStep

CLIENT_TIMEOUT = 20.0
WAIT_TIMEOUT = 30.0
AE_TITLE = "MWLTEST"

STUDY_1 = "1.2.826.0.1.3680043.10.543.1"
STUDY_2 = "1.2.826.0.1.3680043.10.543.2"
TODAY = dt.datetime.now().replace(hour=9, minute=0, second=0, microsecond=0)


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT_TIMEOUT, what: str = "") -> Any:
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def _order(
    patient_id: str,
    name: str,
    study_uid: str,
    accession: str,
    rp_id: str,
    placer: str,
    filler: str,
    steps: tuple[ScheduledStep, ...],
) -> Order:
    return Order(
        order_control="NW",
        order_status="SC",
        patient=PatientDemographics(patient_id, "HOSP", name, "19700101", "M"),
        procedures=(
            RequestedProcedure(
                study_instance_uid=study_uid,
                requested_procedure_id=rp_id,
                accession_number=accession,
                requested_procedure_description="CT head",
                requested_procedure_code=Code("CTHEAD", "99RIS", "CT Head"),
                placer_order_number=placer,
                filler_order_number=filler,
                steps=steps,
            ),
        ),
        sending_facility="HOSP",
    )


ORDERS = (
    _order(
        "P1",
        "Müller^Hans",
        STUDY_1,
        "ACC1",
        "RP1",
        "PL1",
        "FI1",
        (ScheduledStep("S1", "CT", "CT01", "CT01-NAME", start=TODAY),),
    ),
    _order(
        "P2",
        "Doe^Jane",
        STUDY_2,
        "ACC2",
        "RP2",
        "PL2",
        "FI2",
        (
            ScheduledStep("S2", "MR", "MR01", "MR01-NAME", start=TODAY),
            ScheduledStep("S3", "MR", "MR01", "MR01-NAME", start=TODAY + dt.timedelta(hours=1)),
        ),
    ),
)


@pytest.fixture
def writers(engine: Engine) -> sessionmaker[Session]:
    """A writer session factory on the migrated database holding :data:`ORDERS`."""
    factory = make_session_factory(engine, writer=True)
    for order in ORDERS:
        with factory.begin() as session:
            apply_order(session, order)
    return factory


def step_statuses(factory: sessionmaker[Session]) -> dict[str, str]:
    """SPS ID -> status, read from the database."""
    with factory() as session:
        rows = session.execute(
            select(
                ScheduledProcedureStep.scheduled_procedure_step_id, ScheduledProcedureStep.status
            )
        ).all()
    return {sps_id: status for sps_id, status in rows}


def outbox_rows(factory: sessionmaker[Session]) -> list[OutboxMessage]:
    """Every outbox message, oldest first (detached)."""
    with factory() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


# --- a RIS: MLLP receiver that answers AA, or AE/AR, and can be down -----------------


def hl7_field(message: bytes, segment: str, position: int, occurrence: int = 0) -> str:
    """``SEG-n`` of a CR-separated message (MSH-1 is the field separator)."""
    found = [line for line in message.decode("utf-8").split("\r") if line.startswith(segment + "|")]
    if occurrence >= len(found):
        return ""
    fields = found[occurrence].split("|")
    if segment == "MSH":
        position -= 1
    return fields[position] if position < len(fields) else ""


class _Handler(socketserver.BaseRequestHandler):
    server: _RisServer

    def handle(self) -> None:
        ris = self.server.ris
        framer = MllpFramer()
        sock: socket.socket = self.request
        ris.register(sock)
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for payload in framer.feed(data):
                    answer = ris.answer(payload)
                    if answer:  # a silent RIS sends nothing back
                        sock.sendall(frame(answer))
        finally:
            ris.unregister(sock)


class _RisServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False  # server_close() joins the connection threads
    block_on_close = True

    def __init__(self, address: tuple[str, int], ris: RisReceiver) -> None:
        self.ris = ris
        super().__init__(address, _Handler)


@dataclass
class RisReceiver:
    """A RIS on loopback: records every message, answers with ``code_for(message)``.

    ``code_for`` returns the MSA-1 code, or ``""`` for no answer at all.

    ``accepted`` lists the MSH-10 and payload of each message answered AA, in order.
    """

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    accepted: list[tuple[str, bytes]] = field(default_factory=list)
    code_for: Callable[[bytes], str] = lambda _payload: "AA"
    _server: _RisServer | None = None
    _thread: threading.Thread | None = None
    _connections: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Listen (on the same port as before after a :meth:`stop`)."""
        self._server = _RisServer(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and drop every connection: the RIS is down."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            # The peer may have closed it already; either way it is down now.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=10)

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.add(sock)

    def unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)

    def answer(self, payload: bytes) -> bytes:
        control_id = hl7_field(payload, "MSH", 10)
        code = self.code_for(payload)
        with self._lock:
            self.received.append(payload)
            if code == "AA":
                self.accepted.append((control_id, payload))
        if not code:
            return b""
        text = "" if code == "AA" else "|rejected by the test RIS"
        return (
            f"MSH|^~\\&|RIS|HOSP|MWL||20261122000000||ACK^O01^ACK|ACK{control_id}|P|2.5.1\r"
            f"MSA|{code}|{control_id}{text}\r"
        ).encode()

    def accepted_statuses(self) -> list[tuple[str, str]]:
        """(ORC-2, ORC-5) of each accepted message, in order."""
        with self._lock:
            return [(hl7_field(p, "ORC", 2), hl7_field(p, "ORC", 5)) for _, p in self.accepted]


@pytest.fixture
def ris() -> Iterator[RisReceiver]:
    """A running RIS answering AA; stopped afterwards."""
    receiver = RisReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def broker_settings(settings: Settings, ris: RisReceiver) -> Settings:
    """Settings of the broker under test: fast retries, the test RIS, no housekeeping."""
    return settings.replace(
        dicom_ae_title=AE_TITLE,
        ris_host="127.0.0.1",
        ris_port=ris.port,
        ris_retry_initial_seconds=0.05,
        ris_retry_max_seconds=0.2,
        ris_poll_interval_seconds=0.05,
        ris_ack_timeout_seconds=5.0,
        retention_interval_seconds=0.0,
    )


class Broker:
    """The broker's MPPS side in-process: the SCP and the RIS sender on one database."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.readers = make_session_factory(engine)
        self.writers = make_session_factory(engine, writer=True)
        self.scp = WorklistScp(settings, self.readers, self.writers)
        self.sender = OutboxSender(settings, self.writers) if settings.ris_host else None

    def start(self) -> Broker:
        self.scp.start()
        if self.sender is not None:
            self.sender.start()
        return self

    def shutdown(self) -> None:
        if self.sender is not None:
            self.sender.shutdown()
        self.scp.shutdown()

    @property
    def address(self) -> tuple[str, int]:
        return self.scp.address


@pytest.fixture
def start_broker(engine: Engine) -> Iterator[Callable[[Settings], Broker]]:
    """Start brokers on the test database; every one started is shut down afterwards."""
    started: list[Broker] = []

    def start(settings: Settings) -> Broker:
        broker = Broker(settings, engine).start()
        started.append(broker)
        return broker

    yield start
    for broker in reversed(started):
        broker.shutdown()


# --- DICOM SCU -----------------------------------------------------------------------


def reference(study_uid: str, sps_id: str = "", accession: str = "", rp_id: str = "") -> Dataset:
    """A Scheduled Step Attributes Sequence item as a modality copies it from the worklist."""
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = accession
    item.RequestedProcedureID = rp_id
    item.ScheduledProcedureStepID = sps_id
    item.RequestedProcedureDescription = ""
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = []
    return item


def n_create_dataset(
    *references: Dataset, status: str = "IN PROGRESS", modality: str = "CT"
) -> Dataset:
    """An N-CREATE attribute list with every Type 1 and Type 2 attribute of PS3.4 Table F.7.2-1."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Hans"
    ds.PatientID = "P1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.ReferencedPatientSequence = []
    ds.ScheduledStepAttributesSequence = list(references)
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedStationName = "CT01-NAME"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261122"
    ds.PerformedProcedureStepStartTime = "090000"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = "CT head"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = modality
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def n_set_dataset(status: str = "COMPLETED", *, end: bool = True) -> Dataset:
    """An N-SET modification list ending the step (PS3.4 F.7.2.2, IHE RAD-7)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    if end:
        ds.PerformedProcedureStepEndDate = "20261122"
        ds.PerformedProcedureStepEndTime = "093000"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.10.543.99"
    series.PerformingPhysicianName = ""
    series.ProtocolName = "HEAD"
    series.OperatorsName = ""
    series.SeriesDescription = ""
    series.RetrieveAETitle = ""
    series.ReferencedImageSequence = []
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


@dataclass
class NResult:
    """Status and attribute list of one N-CREATE or N-SET."""

    status: Dataset
    attributes: Dataset | None

    @property
    def code(self) -> int:
        return int(self.status.Status)


def _associate(address: tuple[str, int], context: str) -> Any:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = CLIENT_TIMEOUT
    assoc = ae.associate(address[0], address[1], ae_title=AE_TITLE)
    assert assoc.is_established, "association rejected or failed"
    return assoc


def n_create(address: tuple[str, int], ds: Dataset, uid: str | None) -> NResult:
    """One MPPS N-CREATE over a new association (pynetdicom SCU)."""
    assoc = _associate(address, ModalityPerformedProcedureStep)
    try:
        status, attributes = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        assert status, "no N-CREATE response"
        return NResult(status, attributes)
    finally:
        assoc.release()


def n_set(address: tuple[str, int], ds: Dataset, uid: str) -> NResult:
    """One MPPS N-SET over a new association (pynetdicom SCU)."""
    assoc = _associate(address, ModalityPerformedProcedureStep)
    try:
        status, attributes = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        assert status, "no N-SET response"
        return NResult(status, attributes)
    finally:
        assoc.release()


def find_sps_ids(address: tuple[str, int], station: str, status: str = "") -> list[str]:
    """SPS IDs a modality sees in a worklist C-FIND for ``station`` (optionally by status)."""
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    sps = Dataset()
    sps.ScheduledStationAETitle = station
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepStatus = status
    sps.ScheduledProcedureStepStartDate = ""
    ds.ScheduledProcedureStepSequence = [sps]
    assoc = _associate(address, ModalityWorklistInformationFind)
    found: list[str] = []
    try:
        for rsp, identifier in assoc.send_c_find(ds, ModalityWorklistInformationFind):
            assert rsp, "no C-FIND response"
            if rsp.Status in (0xFF00, 0xFF01) and identifier is not None:
                found.append(
                    str(identifier.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID)
                )
            elif rsp.Status != 0x0000:
                raise AssertionError(f"C-FIND failed: 0x{rsp.Status:04X}")
    finally:
        assoc.release()
    return sorted(found)
