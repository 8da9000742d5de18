"""Order lifecycle from the RIS to the modality: HL7 over MLLP in, C-FIND out.

Each case sends a sequence of messages to a real HL7 listener and then asks a
real worklist SCP on the same database what a modality would see. Both servers
run in-process on loopback ephemeral ports, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom.status import Status
from sqlalchemy.engine import Engine

from mwl.config import Settings
from mwl.dicom.scp import WorklistScp
from mwl.hl7.client import send_messages
from mwl.hl7.server import Hl7Server
from mwl.store.engine import make_session_factory
from tests import scu

pytestmark = pytest.mark.e2e

STUDY = "1.2.826.0.1.3680043.10.543.7"
_control_ids = itertools.count(1)


@dataclasses.dataclass
class Servers:
    hl7: Hl7Server
    scp: WorklistScp

    def send(self, *messages: bytes) -> list[str]:
        """Send the messages; return each ACK code (MSA-1)."""
        acks = send_messages("127.0.0.1", self.hl7.address[1], list(messages))
        return [ack.split(b"MSA|", 1)[1][:2].decode() for ack in acks]

    def find(self, **keys: str) -> list[Dataset]:
        """What a modality gets for ``keys`` (SPS keys by their keyword), all else universal."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID"):
            setattr(ds, keyword, keys.pop(keyword, ""))
        ds.RequestedProcedureDescription = ""
        sps = Dataset()
        for keyword in (
            "Modality",
            "ScheduledStationAETitle",
            "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime",
            "ScheduledProcedureStepID",
            "ScheduledProcedureStepStatus",
        ):
            setattr(sps, keyword, keys.pop(keyword, ""))
        assert not keys, f"unknown keys {keys}"
        ds.ScheduledProcedureStepSequence = [sps]
        matches, final = scu.c_find(self.scp.address[1], ds)
        assert final == Status.SUCCESS
        return matches


@pytest.fixture
def servers(settings: Settings, engine: Engine) -> Iterator[Servers]:
    settings = settings.replace(dicom_ae_title="MWLTEST")
    hl7 = Hl7Server(settings, make_session_factory(engine, writer=True))
    scp = WorklistScp(settings, make_session_factory(engine))
    hl7.start()
    try:
        scp.start()
        try:
            yield Servers(hl7, scp)
        finally:
            scp.shutdown()
    finally:
        hl7.shutdown()


def orm(
    control: str,
    status: str = "",
    *,
    patient_id: str = "PAT9",
    name: str = "Lifecycle^Lena",
    start: str = "20261121100000",
    description: str = "CT Head",
    charset: str = "UNICODE UTF-8",
    encoding: str = "utf-8",
) -> bytes:
    """An ORM^O01 v2.5 for order PLC9 / accession ACC9 / SPS SPS9 (TQ1-7 start, ZDS UID)."""
    control_id = f"LC{next(_control_ids):05d}"
    segments = [
        f"MSH|^~\\&|RIS|HOSP|MWL|RAD|20261120120000||ORM^O01|{control_id}|P|2.5||||||{charset}",
        f"PID|1||{patient_id}^^^HOSP^MR||{name}||19800101|F",
        f"ORC|{control}|PLC9|FIL9||{status}||||20261120120000",
        f"TQ1|1||||||{start}||R",
        f"OBR|1|PLC9|FIL9|CTH^{description}^LOCAL||||||||||||||ACC9|RP9|SPS9||||CT",
        f"ZDS|{STUDY}^MWL^Application^DICOM",
    ]
    return "\r".join(segments).encode(encoding)


def adt(event: str, patient_id: str, name: str, merged: str = "") -> bytes:
    control_id = f"LC{next(_control_ids):05d}"
    structure = {"A08": "ADT_A01", "A31": "ADT_A05", "A40": "ADT_A39", "A47": "ADT_A30"}[event]
    segments = [
        f"MSH|^~\\&|RIS|HOSP|MWL|RAD|20261120120000||ADT^{event}^{structure}|{control_id}|P|2.5",
        f"EVN|{event}|20261120120000",
        f"PID|1||{patient_id}^^^HOSP^MR||{name}||19800101|F",
    ]
    if merged:
        segments.append(f"MRG|{merged}^^^HOSP^MR")
    return "\r".join(segments).encode()


def step_ids(found: list[Dataset]) -> list[str]:
    return sorted(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for ds in found)


# (ORC-1, ORC-5) sent after NW, the status the step then has, and whether a
# modality sees it without asking for that status.
LIFECYCLE = [
    ("XO", "SC", "SCHEDULED", True),
    ("XO", "", "SCHEDULED", True),
    ("CA", "CA", "CANCELED", False),
    ("CA", "", "CANCELED", False),
    ("OC", "", "CANCELED", False),
    ("DC", "CA", "DISCONTINUED", False),
    ("XO", "CM", "COMPLETED", False),
    ("SC", "CM", "COMPLETED", False),
    ("SC", "IP", "STARTED", False),
    ("HD", "", "HELD", False),
]


@pytest.mark.parametrize(("control", "status", "step_status", "visible"), LIFECYCLE)
def test_order_control_moves_the_step(
    servers: Servers, control: str, status: str, step_status: str, visible: bool
):
    assert servers.send(orm("NW", "SC")) == ["AA"]
    assert step_ids(servers.find(Modality="CT")) == ["SPS9"]
    assert servers.send(orm(control, status)) == ["AA"]
    assert step_ids(servers.find(Modality="CT")) == (["SPS9"] if visible else [])
    asked = servers.find(ScheduledProcedureStepStatus=step_status)
    assert step_ids(asked) == ["SPS9"]
    assert asked[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == step_status


def test_hold_and_release(servers: Servers):
    assert servers.send(orm("NW", "SC"), orm("HD"), orm("RL")) == ["AA", "AA", "AA"]
    assert step_ids(servers.find(Modality="CT")) == ["SPS9"]


def test_change_order_moves_time_and_room(servers: Servers):
    assert servers.send(orm("NW", "SC")) == ["AA"]
    assert servers.send(orm("XO", "SC", start="20261122143000", description="CT Neck")) == ["AA"]
    assert servers.find(ScheduledProcedureStepStartDate="20261121") == []
    (found,) = servers.find(ScheduledProcedureStepStartDate="20261122")
    sps = found.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledProcedureStepStartTime == "143000"
    assert found.RequestedProcedureDescription == "CT Neck"


def test_unmapped_order_control_changes_nothing(servers: Servers):
    assert servers.send(orm("NW", "SC")) == ["AA"]
    assert servers.send(orm("ZZ", "", start="20261130080000")) == ["AE"]
    (found,) = servers.find(Modality="CT")
    assert found.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == "20261121"


def test_replay_is_harmless(servers: Servers):
    message = orm("NW", "SC")
    assert servers.send(message, message, orm("NW", "SC")) == ["AA", "AA", "AA"]
    assert step_ids(servers.find(Modality="CT")) == ["SPS9"]


@pytest.mark.parametrize(
    ("charset", "encoding"),
    [("", "latin-1"), ("8859/1", "latin-1"), ("UNICODE UTF-8", "utf-8")],
    ids=["unlabelled-latin1", "8859-1", "utf-8"],
)
def test_names_survive_every_charset(servers: Servers, charset: str, encoding: str):
    message = orm("NW", "SC", name="Müller^Jörg", charset=charset, encoding=encoding)
    assert servers.send(message) == ["AA"]
    (found,) = servers.find(PatientName="MULLER*")
    assert found.PatientName == "Müller^Jörg"


def test_escapes_are_decoded(servers: Servers):
    assert servers.send(orm("NW", "SC", description="CT Head \\T\\ Neck")) == ["AA"]
    (found,) = servers.find(Modality="CT")
    assert found.RequestedProcedureDescription == "CT Head & Neck"


def test_omi_steps_are_reconciled(servers: Servers):
    def omi(*steps: str) -> bytes:
        control_id = f"LC{next(_control_ids):05d}"
        segments = [
            f"MSH|^~\\&|RIS|HOSP|MWL|RAD|20261120120000||OMI^O23^OMI_O23|{control_id}|P|2.5.1",
            "PID|1||PAT8^^^HOSP^MR||Omi^Otto||19700101|M",
            "ORC|NW|PLC8|FIL8||SC",
            "TQ1|1||||||20261121110000||R",
            "OBR|1|PLC8|FIL8|CTTA^CT Thorax Abdomen^LOCAL",
            *(
                f"IPC|ACC8|RP8|1.2.826.0.1.3680043.10.543.8|{sps}|CT|CTX^CT {sps}^LOCAL||ROOM 1|CT1"
                for sps in steps
            ),
        ]
        return "\r".join(segments).encode()

    assert servers.send(omi("SPS8A", "SPS8B")) == ["AA"]
    found = servers.find(ScheduledStationAETitle="CT1")
    assert step_ids(found) == ["SPS8A", "SPS8B"]
    assert servers.send(omi("SPS8B")) == ["AA"]
    assert step_ids(servers.find(ScheduledStationAETitle="CT1")) == ["SPS8B"]


@pytest.mark.parametrize("event", ["A08", "A31"])
def test_patient_update_reaches_open_items(servers: Servers, event: str):
    assert servers.send(orm("NW", "SC")) == ["AA"]
    assert servers.send(adt(event, "PAT9", "Lifecycle-Lang^Lena")) == ["AA"]
    (found,) = servers.find(PatientID="PAT9")
    assert found.PatientName == "Lifecycle-Lang^Lena"


def test_merge_moves_items_to_the_surviving_patient(servers: Servers):
    assert servers.send(orm("NW", "SC", patient_id="PATOLD")) == ["AA"]
    assert servers.send(adt("A40", "PATNEW", "Lifecycle^Lena", merged="PATOLD")) == ["AA"]
    assert servers.find(PatientID="PATOLD") == []
    assert step_ids(servers.find(PatientID="PATNEW")) == ["SPS9"]


def test_identifier_change(servers: Servers):
    assert servers.send(orm("NW", "SC", patient_id="PATTMP")) == ["AA"]
    assert servers.send(adt("A47", "PATREAL", "Lifecycle^Lena", merged="PATTMP")) == ["AA"]
    assert servers.find(PatientID="PATTMP") == []
    assert step_ids(servers.find(PatientID="PATREAL")) == ["SPS9"]


def test_unsupported_message_type_is_rejected_and_changes_nothing(servers: Servers):
    assert servers.send(orm("NW", "SC")) == ["AA"]
    other = orm("NW", "SC", start="20261130080000").replace(b"ORM^O01", b"ORU^R01")
    assert servers.send(other) == ["AR"]
    (found,) = servers.find(Modality="CT")
    assert found.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == "20261121"


def test_undecodable_bytes_are_rejected_and_store_nothing(servers: Servers):
    # Labelled UTF-8 but written in Latin-1: the name cannot be decoded.
    message = orm("NW", "SC", name="Müller^Jörg", charset="UNICODE UTF-8", encoding="latin-1")
    assert servers.send(message) == ["AE"]
    assert servers.find(Modality="CT") == []
