"""Lenient keys over real associations: what is ignored (0xFF01) and what is matched.

A key matched only on request (Pregnancy Status) filters nothing unless the calling
AE's profile turns matching on for it; a value outside a key's enumerated values is
ignored rather than matched into an empty worklist. Each is answered with Pending
0xFF01 and the query log says why. pynetdicom and DCMTK findscu as SCUs, on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.status import Status
from sqlalchemy import select
from sqlalchemy.engine import Engine

from mwl.config import DicomAeProfile, Settings
from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.orders.apply import apply_order
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import QueryLogEntry
from tests.peers import FINDSCU

from .conftest import c_find

pytestmark = pytest.mark.e2e

FF00, FF01 = 0xFF00, 0xFF01
START = dt.datetime(2026, 11, 24, 10, 15)


def _order(patient_id: str, sps_id: str, pregnancy: str) -> Order:
    patient = PatientDemographics(
        patient_id, "HOSP", f"Lenient^{patient_id}", "19910412", "F", pregnancy_status=pregnancy
    )
    procedure = RequestedProcedure(
        study_instance_uid="",
        requested_procedure_id=f"RP{patient_id}",
        accession_number=f"A{patient_id}",
        placer_order_number=f"PL{patient_id}",
        steps=(ScheduledStep(sps_id, modality="MR", start=START),),
    )
    return Order("NW", "SC", patient, (procedure,), sending_facility="HOSP")


@pytest.fixture(scope="module")
def module_engine(module_database_url: str) -> Iterator[Engine]:
    """Overrides the package's: one patient known pregnant (3), one with no status."""
    engine = make_engine(module_database_url)
    factory = make_session_factory(engine, writer=True)
    for order in (_order("PPREG", "SPREG", "3"), _order("PNONE", "SNONE", "")):
        with factory.begin() as session:
            apply_order(session, order)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def module_settings(module_settings: Settings) -> Settings:
    return module_settings.replace(
        dicom_ae_profiles=(
            DicomAeProfile("PREGSCU", match_keys=("PregnancyStatus",)),
            DicomAeProfile("QUIETSCU", warn_ignored_keys=False),
        )
    )


def _query(**keys: object) -> Dataset:
    ds = Dataset()
    ds.PatientID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    sps = Dataset()
    sps.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _answer(result) -> tuple[list[int], list[str]]:
    statuses = [int(s.Status) for s in result.statuses]
    ids = sorted(
        d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for d in result.identifiers
    )
    return statuses, ids


def _last_log(engine: Engine, calling: str) -> QueryLogEntry:
    with make_session_factory(engine)() as session:
        row = session.scalars(
            select(QueryLogEntry)
            .where(QueryLogEntry.calling_ae_title == calling)
            .order_by(QueryLogEntry.id.desc())
        ).first()
    assert row is not None
    return row


@pytest.mark.parametrize("value", [0, 3, 4])
def test_pregnancy_status_filters_nothing_without_a_profile(scp, module_engine, value):
    statuses, ids = _answer(c_find(scp.address, _query(PregnancyStatus=value), calling_ae="ANYSCU"))
    assert ids == ["SNONE", "SPREG"]
    assert statuses == [FF01, FF01, Status.SUCCESS]
    row = _last_log(module_engine, "ANYSCU")
    assert row.status == Status.SUCCESS
    assert f"PregnancyStatus '{value}' ignored: matched only for AEs whose profile" in row.error


def test_a_profile_turns_matching_on(scp, module_engine):
    result = c_find(scp.address, _query(PregnancyStatus=3), calling_ae="PREGSCU")
    assert _answer(result) == ([FF00, Status.SUCCESS], ["SPREG"])
    assert result.identifiers[0].PregnancyStatus == 3
    assert _last_log(module_engine, "PREGSCU").error == ""
    # 0 is none of 1-4: ignored even here, never an empty worklist.
    zero = c_find(scp.address, _query(PregnancyStatus=0), calling_ae="PREGSCU")
    assert _answer(zero) == ([FF01, FF01, Status.SUCCESS], ["SNONE", "SPREG"])
    assert (
        "not one of its enumerated values (1, 2, 3, 4)" in _last_log(module_engine, "PREGSCU").error
    )


def test_patient_sex_outside_m_f_o_is_ignored(scp, module_engine):
    statuses, ids = _answer(c_find(scp.address, _query(PatientSex="X"), calling_ae="ANYSCU"))
    assert (statuses, ids) == ([FF01, FF01, Status.SUCCESS], ["SNONE", "SPREG"])
    assert "PatientSex 'X' ignored" in _last_log(module_engine, "ANYSCU").error
    # A valid value is matched as before (both patients are F).
    assert _answer(c_find(scp.address, _query(PatientSex="M")))[1] == []


def test_a_profile_may_answer_ignored_keys_with_plain_pending(scp, module_engine):
    result = c_find(scp.address, _query(PregnancyStatus=0), calling_ae="QUIETSCU")
    assert _answer(result) == ([FF00, FF00, Status.SUCCESS], ["SNONE", "SPREG"])
    assert "PregnancyStatus '0' ignored" in _last_log(module_engine, "QUIETSCU").error


def test_malformed_values_still_fail(scp):
    bad = c_find(scp.address, _query(PatientBirthDate="2026-13-45"), calling_ae="ANYSCU")
    assert bad.identifiers == []
    assert bad.final_status == 0xA900


def _findscu(address, tmp_path: Path, calling: str, *keys: str) -> tuple[list[Dataset], str]:
    args = [
        str(FINDSCU),
        "-v",
        "-W",
        "-aet",
        calling,
        "-aec",
        "MWLTEST",
        "-X",
        "-od",
        str(tmp_path),
    ]
    args += ["-to", "20", "-ta", "20", "-td", "20", address[0], str(address[1])]
    for key in (*keys, "PatientID", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID"):
        args += ["-k", key]
    done = subprocess.run(
        args, capture_output=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"}, check=False
    )
    output = (done.stdout + done.stderr).decode("latin-1")
    assert done.returncode == 0, output
    return [dcmread(f) for f in sorted(tmp_path.glob("rsp*.dcm"))], output


@FINDSCU.required
def test_findscu_pregnancy_status_0_gets_the_whole_worklist_with_the_warning(scp, tmp_path):
    found, output = _findscu(scp.address, tmp_path, "DCMTKSCU", "PregnancyStatus=0")
    assert sorted(d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for d in found) == [
        "SNONE",
        "SPREG",
    ]
    # findscu -v names each response's status: two warnings, then success.
    pending = re.findall(r"Received Find Response \d+ \(([^)]*)\)", output)
    assert pending == ["Pending: WarningUnsupportedOptionalKeys"] * 2, output
    assert "Received Final Find Response (Success)" in output


@FINDSCU.required
def test_findscu_with_matching_turned_on(scp, tmp_path):
    found, _ = _findscu(scp.address, tmp_path, "PREGSCU", "PregnancyStatus=3")
    assert [d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for d in found] == [
        "SPREG"
    ]
    assert found[0].PregnancyStatus == 3
