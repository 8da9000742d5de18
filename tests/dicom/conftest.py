"""Fixtures of the DICOM adapter tests: a sample worklist, a running SCP and a C-FIND client."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.dicom.scp import WorklistScp
from mwl.domain import Code, Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.orders.apply import apply_order
from mwl.store.engine import make_engine, make_session_factory
from tests.databases import migrated_database_url

CLIENT_TIMEOUT = 20.0


def order(
    patient_id: str,
    name: str,
    accession: str,
    steps: tuple[ScheduledStep, ...],
    *,
    birth_date: str = "",
    sex: str = "",
    control: str = "NW",
    status: str = "SC",
    rp_code: Code | None = None,
    description: str = "",
) -> Order:
    """An order with one requested procedure (placer number = accession or patient ID)."""
    return Order(
        order_control=control,
        order_status=status,
        patient=PatientDemographics(patient_id, "HOSP", name, birth_date, sex),
        procedures=(
            RequestedProcedure(
                study_instance_uid="",
                requested_procedure_id=f"RP{patient_id}",
                accession_number=accession,
                requested_procedure_description=description,
                requested_procedure_code=rp_code,
                requested_procedure_priority="ROUTINE",
                referring_physician_name="Welby^Marcus",
                placer_order_number=f"PL{patient_id}{accession}",
                steps=steps,
            ),
        ),
        sending_facility="HOSP",
    )


def step(
    sps_id: str,
    modality: str,
    station: str,
    start: dt.datetime,
    description: str = "",
    codes: tuple[Code, ...] = (),
) -> ScheduledStep:
    """A scheduled step."""
    return ScheduledStep(
        sps_id,
        modality=modality,
        scheduled_station_ae_title=station,
        scheduled_station_name=f"{station}-NAME",
        start=start,
        scheduled_procedure_step_description=description,
        scheduled_protocol_codes=codes,
    )


D = dt.datetime
# The sample worklist: 6 visible steps and one canceled.
SAMPLE_ORDERS: tuple[Order, ...] = (
    order(
        "P1",
        "Müller^Hans",
        "ACC1",
        (
            step(
                "S1",
                "CT",
                "CT01",
                D(2026, 11, 21, 9, 0),
                "CT head",
                (Code("P-HEAD", "99LOCAL", "Head protocol"), Code("P-CON", "99LOCAL", "Contrast")),
            ),
        ),
        birth_date="19700101",
        sex="M",
        rp_code=Code("RPC1", "99LOCAL", "CT Head"),
        description="CT of the head",
    ),
    order(
        "P2",
        "Doe^Jane",
        "ACC2",
        (
            step("S2", "MR", "MR01", D(2026, 11, 21, 14, 30), "MR knee_left 100%"),
            step("S3", "MR", "MR01", D(2026, 11, 22, 8, 0), "MR kneeXleft 100X"),
        ),
        birth_date="19800202",
        sex="F",
    ),
    order(
        "P3",
        "Øster^Émile",
        "ACC3",
        (step("S4", "US", "US01", D(2026, 11, 23, 10, 0), "US abdomen"),),
        birth_date="19900303",
        sex="M",
    ),
    order(
        "P4",
        "Smith^John",
        "",  # no accession number: Type 2, stored empty
        (step("S5", "CT", "CT02", D(2026, 11, 21, 23, 30), "CT chest"),),
    ),
    order(
        "P6",
        "Doe^John",
        "ACC6",
        (step("S6", "CR", "CR01", D(2026, 11, 20, 7, 15), "CR thorax"),),
        birth_date="19500505",
        sex="M",
    ),
    order(
        "P5",
        "Cancel^Me",
        "ACC5",
        (step("S7", "CT", "CT01", D(2026, 11, 21, 10, 0), "CT canceled"),),
    ),
    order(
        "P5",
        "Cancel^Me",
        "ACC5",
        (step("S7", "CT", "CT01", D(2026, 11, 21, 10, 0), "CT canceled"),),
        control="CA",
        status="CA",
    ),
)


def load_samples(factory: sessionmaker[Session]) -> None:
    """Put :data:`SAMPLE_ORDERS` in through the order service."""
    for sample in SAMPLE_ORDERS:
        with factory.begin() as session:
            apply_order(session, sample)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database without rows per test module, on SQLite and on PostgreSQL."""
    directory = tmp_path_factory.mktemp("dicomdb")
    yield from migrated_database_url(request.param, directory, f"mwl_dicom_{os.getpid()}")


@pytest.fixture(scope="module")
def module_engine(module_database_url: str) -> Iterator[Engine]:
    """An engine on the module's database holding the sample worklist."""
    engine = make_engine(module_database_url)
    load_samples(make_session_factory(engine, writer=True))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def module_settings(module_database_url: str) -> Settings:
    """Settings of the module's SCP: loopback, ephemeral port."""
    return Settings(
        database_url=module_database_url,
        bind_address="127.0.0.1",
        dicom_port=0,
        dicom_ae_title="MWLTEST",
    )


@pytest.fixture(scope="module")
def scp(module_engine: Engine, module_settings: Settings) -> Iterator[WorklistScp]:
    """One running SCP on the sample worklist per module and backend."""
    server = WorklistScp(module_settings, make_session_factory(module_engine))
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


def _client_nodelay(event: Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class FindResult:
    """What one C-FIND got: the statuses in order and the pending identifiers."""

    statuses: list[Dataset]
    identifiers: list[Dataset]

    @property
    def final_status(self) -> int:
        return int(self.statuses[-1].Status)


FindFn = Callable[..., FindResult]


def c_find(
    address: tuple[str, int],
    identifier: Dataset,
    *,
    calling_ae: str = "TESTSCU",
    called_ae: str = "MWLTEST",
) -> FindResult:
    """Send one MWL C-FIND over a new association and collect everything it returns."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = CLIENT_TIMEOUT
    assoc = ae.associate(
        address[0],
        address[1],
        ae_title=called_ae,
        evt_handlers=[(evt.EVT_CONN_OPEN, _client_nodelay)],
    )
    assert assoc.is_established, "association rejected or failed"
    result = FindResult([], [])
    try:
        for status, found in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
            assert status, "no response (timeout or abort)"
            result.statuses.append(status)
            if found is not None and status.Status in (0xFF00, 0xFF01):
                result.identifiers.append(found)
    finally:
        assoc.release()
    return result


def c_echo(address: tuple[str, int], calling_ae: str = "TESTSCU") -> int | None:
    """C-ECHO status, or None when no association could be made."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = CLIENT_TIMEOUT
    assoc = ae.associate(address[0], address[1], ae_title="MWLTEST")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else None
    finally:
        assoc.release()


@pytest.fixture
def find() -> FindFn:
    """The pynetdicom C-FIND client as a fixture (tests cannot import one another)."""
    return c_find


@pytest.fixture
def echo() -> Callable[..., int | None]:
    """The pynetdicom C-ECHO client."""
    return c_echo


def mwl_identifier(**top: object) -> Dataset:
    """An Identifier with the usual return keys; ``sps_*`` keywords go in the SPS item."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = ""
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    for keyword, value in top.items():
        target, name = (sps, keyword[4:]) if keyword.startswith("sps_") else (ds, keyword)
        tag = tag_for_keyword(name)
        # As a modality may send it: pydicom's own value validation is off.
        target.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


@pytest.fixture
def identifier() -> Callable[..., Dataset]:
    """Factory of MWL Identifiers (see :func:`mwl_identifier`)."""
    return mwl_identifier


@pytest.fixture
def samples_dir() -> Path:
    """The repository's samples folder."""
    return Path(__file__).resolve().parents[2] / "samples"
