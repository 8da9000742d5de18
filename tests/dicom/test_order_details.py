"""Order details as C-FIND keys: returned with their values and matched (issues 3 and 4).

Over real associations with pynetdicom as SCU, on SQLite and PostgreSQL: a worklist
with one order that has every detail and one that has none (an empty stored value
never matches a non-universal key, PS3.4 K.2.2.1.1.1); and end to end, the richer
sample order sent over MLLP and asked for with those keys.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.status import Status
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import DicomAeProfile, Settings
from mwl.dicom.scp import WorklistScp
from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.server import Hl7Server
from mwl.orders.apply import apply_order
from mwl.store.engine import make_engine, make_session_factory
from tests.peers import FINDSCU

from .conftest import c_find

pytestmark = pytest.mark.e2e

SAMPLE = "orm_o01_nw_details.hl7"
START = dt.datetime(2026, 11, 24, 10, 15)


def _order(patient_id: str, accession: str, sps_id: str, *, detailed: bool) -> Order:
    patient = PatientDemographics(patient_id, "HOSP", f"Detail^{patient_id}", "19910412", "F")
    extra: dict[str, str] = {}
    if detailed:
        patient = PatientDemographics(
            patient_id,
            "HOSP",
            f"Detail^{patient_id}",
            "19910412",
            "F",
            admission_id="ADM100",
            current_patient_location="WARD3, room 312, bed 2",
            pregnancy_status="3",
            allergies="Penicillin\\Iodine",
        )
        extra = dict(
            institution_name="St. Mary Hospital",
            institutional_department_name="Radiology Outpatients",
            reason_for_the_requested_procedure="Headache",
            requested_procedure_comments="Hard of hearing.\r\nSedation may be needed.",
            confidentiality_code="Restricted",
            patient_transport_arrangements="WHLC",
            patient_state="Infectious (MRSA)",
            medical_alerts="Pacemaker in situ",
            patient_weight="72.5",
            patient_size="1.68",
        )
    return Order(
        "NW",
        "SC",
        patient,
        (
            RequestedProcedure(
                study_instance_uid="",
                requested_procedure_id=accession,
                accession_number=accession,
                placer_order_number=f"PL{accession}",
                steps=(ScheduledStep(sps_id, modality="MR", start=START),),
                **extra,  # type: ignore[arg-type]
            ),
        ),
        sending_facility="HOSP",
    )


@pytest.fixture(scope="module")
def module_engine(module_database_url: str) -> Iterator[Engine]:
    """Overrides the package's: a worklist of one detailed and one bare order."""
    engine = make_engine(module_database_url)
    factory = make_session_factory(engine, writer=True)
    for order in (
        _order("PDET", "ACCDET", "SDET", detailed=True),
        _order("PBARE", "ACCBARE", "SBARE", detailed=False),
    ):
        with factory.begin() as session:
            apply_order(session, order)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def module_settings(module_settings: Settings) -> Settings:
    """The package's, with the test SCU matching on Pregnancy Status (matched on request)."""
    return module_settings.replace(
        dicom_ae_profiles=(DicomAeProfile("TESTSCU", match_keys=("PregnancyStatus",)),)
    )


def _query(**keys: object) -> Dataset:
    """An Identifier asking for the SPS ID and for ``keys`` (top level)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    sps = Dataset()
    sps.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _sps_ids(identifiers: list[Dataset]) -> list[str]:
    return [d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for d in identifiers]


# keyword, value held by the detailed order (as pydicom reads it), further matching values.
DETAIL_KEYS: list[tuple[str, object, tuple[object, ...]]] = [
    ("AdmissionID", "ADM100", ("ADM1*", "?DM100")),
    ("CurrentPatientLocation", "WARD3, room 312, bed 2", ("WARD3*",)),
    ("InstitutionName", "St. Mary Hospital", ("*Mary*",)),
    ("InstitutionalDepartmentName", "Radiology Outpatients", ("Radiology*",)),
    ("PatientState", "Infectious (MRSA)", ("*MRSA*",)),
    ("MedicalAlerts", "Pacemaker in situ", ("Pacemaker*",)),
    ("PatientTransportArrangements", "WHLC", ("WH*",)),
    ("ReasonForTheRequestedProcedure", "Headache", ("Head*",)),
    ("RequestedProcedureComments", "Hard of hearing.\r\nSedation may be needed.", ("*hearing*",)),
    ("ConfidentialityCode", "Restricted", ("Restr*",)),
    ("PatientWeight", "72.5", ()),
    ("PatientSize", "1.68", ()),
    ("PregnancyStatus", 3, ()),
    # Two values: a key matches any one of them; two key values are ORed.
    ("Allergies", ["Penicillin", "Iodine"], ("Iodine", "Penicillin", "Iod*", "X\\Iodine")),
]


def _as_read(value: object) -> object:
    """A returned value in plain Python terms (DS as text, multi-values as a list)."""
    if isinstance(value, str | int):
        return value
    if hasattr(value, "original_string"):
        return str(value.original_string)
    return [str(v) for v in value]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("keyword", "held", "patterns"), DETAIL_KEYS, ids=[k[0] for k in DETAIL_KEYS]
)
def test_detail_key_is_returned_and_matched(
    scp: WorklistScp, keyword: str, held: object, patterns: tuple[object, ...]
) -> None:
    # Universal: both orders, the bare one with the key present and empty (Type 2).
    result = c_find(scp.address, _query(**{keyword: None if keyword in _NUMERIC else ""}))
    assert result.final_status == Status.SUCCESS
    by_sps = dict(zip(_sps_ids(result.identifiers), result.identifiers, strict=True))
    assert set(by_sps) == {"SDET", "SBARE"}
    assert _as_read(by_sps["SDET"][keyword].value) == held
    assert by_sps["SBARE"][keyword].is_empty
    # Single value (the stored value as a modality would send it back) and patterns.
    query_value = "\\".join(held) if isinstance(held, list) else held
    for value in (query_value, *patterns):
        found = c_find(scp.address, _query(**{keyword: value}))
        assert found.final_status == Status.SUCCESS, value
        assert [int(s.Status) for s in found.statuses[:-1]] == [Status.PENDING], value
        assert _sps_ids(found.identifiers) == ["SDET"], value
        assert _as_read(found.identifiers[0][keyword].value) == held
    # A value the order does not hold finds nothing; the bare order never matches.
    other = 1 if keyword == "PregnancyStatus" else "99.9" if keyword in _NUMERIC else "NOPE*"
    assert c_find(scp.address, _query(**{keyword: other})).identifiers == []


_NUMERIC = {"PatientWeight", "PatientSize", "PregnancyStatus"}


def test_referenced_sequences_stay_empty_type_2(scp: WorklistScp) -> None:
    ds = _query(ReferencedStudySequence=[], ReferencedPatientSequence=[], AdmissionID="ADM100")
    result = c_find(scp.address, ds)
    (found,) = result.identifiers
    assert found.AdmissionID == "ADM100"
    assert "ReferencedStudySequence" in found and len(found.ReferencedStudySequence) == 0
    assert "ReferencedPatientSequence" in found and len(found.ReferencedPatientSequence) == 0


def test_only_the_asked_detail_keys_are_returned(scp: WorklistScp) -> None:
    (found,) = c_find(scp.address, _query(PatientWeight="72.5")).identifiers
    assert "PatientWeight" in found
    for keyword in ("PatientSize", "AdmissionID", "InstitutionName", "Allergies"):
        assert keyword not in found


@FINDSCU.required
def test_dcmtk_findscu_matches_and_reads_the_detail_keys(scp: WorklistScp, tmp_path: Path) -> None:
    """A client nobody here wrote: DCMTK ``findscu -W`` (a subprocess on loopback)."""
    args = [str(FINDSCU), "-W", "-aet", "DCMTKSCU", "-aec", "MWLTEST", "-X", "-od", str(tmp_path)]
    args += ["-to", "20", "-ta", "20", "-td", "20", scp.address[0], str(scp.address[1])]
    for key in (
        "SpecificCharacterSet=ISO_IR 192",
        "AdmissionID=ADM1*",
        "Allergies=Iodine",
        "PatientWeight",
        "PregnancyStatus",
        "InstitutionName",
        "RequestedProcedureComments",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    ):
        args += ["-k", key]
    done = subprocess.run(
        args,
        capture_output=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode("latin-1")
    (response,) = [dcmread(f) for f in sorted(tmp_path.glob("rsp*.dcm"))]
    assert response.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "SDET"
    assert response.AdmissionID == "ADM100"
    assert list(response.Allergies) == ["Penicillin", "Iodine"]
    assert float(response.PatientWeight) == 72.5
    assert response.PregnancyStatus == 3
    assert response.InstitutionName == "St. Mary Hospital"
    assert response.RequestedProcedureComments == "Hard of hearing.\r\nSedation may be needed."


def test_hl7_order_over_mllp_then_c_find_returns_the_mapped_values(
    settings: Settings, session_factory: sessionmaker[Session], samples_dir
) -> None:
    """End to end: the richer sample ORM over MLLP, then a pynetdicom C-FIND for its details."""
    raw = (samples_dir / "hl7" / SAMPLE).read_bytes()
    with (
        Hl7Server(settings, session_factory) as hl7,
        WorklistScp(settings, session_factory) as dicom,
    ):
        (ack,) = send_messages(*hl7.address, [raw], timeout=10)
        assert ack_summary(ack)[:2] == ("AA", "MSG00020")
        ds = _query(
            AdmissionID="V20261123001",  # matched: PV1-19
            CurrentPatientLocation="",
            InstitutionName="",
            InstitutionalDepartmentName="",
            PatientState="",
            MedicalAlerts="",
            PatientTransportArrangements="",
            ReasonForTheRequestedProcedure="",
            RequestedProcedureComments="",
            ConfidentialityCode="",
            PatientWeight=None,
            PatientSize=None,
            PregnancyStatus=None,
            Allergies="",
            PatientName="",
        )
        result = c_find(dicom.address, ds, called_ae=settings.dicom_ae_title)
    assert result.final_status == Status.SUCCESS
    (found,) = result.identifiers
    assert found.PatientName == "Lefèvre^Chloé"
    assert found.AdmissionID == "V20261123001"  # PV1-19
    assert found.CurrentPatientLocation == "WARD3, room 312, bed 2"  # PV1-3
    assert found.InstitutionName == "St. Mary Hospital"  # ORC-17
    assert found.InstitutionalDepartmentName == "Radiology Outpatients"  # ORC-13.9
    assert found.PatientState == "Infectious (MRSA)"  # OBR-12
    assert found.MedicalAlerts == "Pacemaker in situ"  # OBR-13
    assert found.PatientTransportArrangements == "WHLC"  # OBR-30
    assert found.ReasonForTheRequestedProcedure == "Headache"  # OBR-31
    assert found.RequestedProcedureComments == (  # NTE-3 after OBR
        "Patient is hard of hearing.\r\nSedation may be needed; escort from ward 3."
    )
    assert found.ConfidentialityCode == "Restricted"  # ORC-28
    assert float(found.PatientWeight) == 72.5  # OBX BODY WEIGHT kg
    assert float(found.PatientSize) == 1.68  # OBX BODY HEIGHT m
    assert found.PregnancyStatus == 3  # PV1-15 B6
    assert list(found.Allergies) == ["Penicillin", "Iodinated contrast media"]  # AL1-3
