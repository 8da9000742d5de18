"""Timezones across the DST changes of Europe/Zurich (2026-03-29 and 2026-10-25).

HL7 orders over MLLP whose TQ1-7 / ORC-7.4 carry UTC offsets are stored as the
site's wall-clock time; DCMTK findscu and pynetdicom ask for date and time ranges
around each switch, with and without Timezone Offset From UTC (0008,0201); a profile
asks for the offset in the responses; the day list of each switch day. SQLite and
PostgreSQL.
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
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import DicomAeProfile, Settings
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.server import Hl7Server
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import Hl7Message
from mwl.worklist.daylist import items_for_day
from tests.peers import FINDSCU

from .conftest import c_find

pytestmark = pytest.mark.e2e

# SPS ID, TQ1-7, ORC-7.4 (the start the message carries), and the stored wall time.
ORDERS = [
    ("SMAR1", "20260329003000+0000", "", dt.datetime(2026, 3, 29, 1, 30)),  # CET
    ("SMAR2", "20260329013000+0000", "", dt.datetime(2026, 3, 29, 3, 30)),  # CEST
    ("SMAR3", "202603290215", "", dt.datetime(2026, 3, 29, 2, 15)),  # no offset: as sent
    ("SOCT1", "20261025003000+0000", "", dt.datetime(2026, 10, 25, 2, 30)),  # CEST
    ("SOCT2", "20261025013000+0000", "", dt.datetime(2026, 10, 25, 2, 30)),  # CET again
    # The same instant in two offsets: they agree, no warning.
    ("SOCT3", "20261025040000+0100", "20261025050000+0200", dt.datetime(2026, 10, 25, 4, 0)),
    # They disagree: TQ1-7 wins, the message log says so.
    ("SOCT4", "20261025100000+0100", "20261025110000+0100", dt.datetime(2026, 10, 25, 10, 0)),
]


def _message(number: int, sps_id: str, tq1: str, orc7: str) -> bytes:
    segments = [
        f"MSH|^~\\&|RIS|HOSPITAL|MWL|RADIOLOGY|20260301120000||ORM^O01^ORM_O01|TZ{number:04d}|P|2.5",
        f"PID|1||PTZ{number}^^^HOSPITAL^MR||Zeit^Test{number}||19800101|F",
        f"ORC|NW|PLTZ{number}|FITZ{number}||SC||^^^{orc7}",
        f"TQ1|1||||||{tq1}",
        f"OBR|1|PLTZ{number}|FITZ{number}|XR^XR^LOCAL"
        + "|" * 14
        + f"ACCTZ{number}|RPTZ{number}|{sps_id}||||DX",
    ]
    return "\r".join(segments).encode() + b"\r"


@pytest.fixture(scope="module")
def module_settings(module_settings: Settings) -> Settings:
    return module_settings.replace(
        timezone="Europe/Zurich",
        hl7_port=0,
        dicom_ae_profiles=(DicomAeProfile("TZSCU", timezone_offset=True),),
    )


@pytest.fixture(scope="module")
def module_engine(module_database_url: str, module_settings: Settings) -> Iterator[Engine]:
    """Overrides the package's: the orders above, sent over MLLP."""
    engine = make_engine(module_database_url)
    factory = make_session_factory(engine, writer=True)
    with Hl7Server(module_settings, factory) as hl7:
        raws = [_message(n, *row[:3]) for n, row in enumerate(ORDERS)]
        acks = send_messages(*hl7.address, raws, timeout=20)
    assert [ack_summary(a)[0] for a in acks] == ["AA"] * len(ORDERS)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(module_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(module_engine)


def _query(date: str, time: str = "", offset: str | None = None) -> Dataset:
    ds = Dataset()
    if offset is not None:
        ds.TimezoneOffsetFromUTC = offset
    ds.PatientID = ""
    sps = Dataset()
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepStartDate = date
    sps.ScheduledProcedureStepStartTime = time
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _steps(result) -> list[tuple[str, str, str]]:
    out = []
    for ds in result.identifiers:
        step = ds.ScheduledProcedureStepSequence[0]
        out.append(
            (
                step.ScheduledProcedureStepID,
                step.ScheduledProcedureStepStartDate + step.ScheduledProcedureStepStartTime,
                ds.get("TimezoneOffsetFromUTC", ""),
            )
        )
    return out


def test_offsets_are_stored_as_the_sites_wall_time(session_factory):
    with session_factory() as session:
        spring = items_for_day(session, dt.date(2026, 3, 29))
        autumn = items_for_day(session, dt.date(2026, 10, 25))
    held = {i.scheduled_procedure_step_id: i.start for i in (*spring, *autumn)}
    assert held == {sps: start for sps, _, _, start in ORDERS}
    # The day list of each switch day, in start order.
    assert [i.scheduled_procedure_step_id for i in spring] == ["SMAR1", "SMAR3", "SMAR2"]
    assert [i.scheduled_procedure_step_id for i in autumn][2:] == ["SOCT3", "SOCT4"]


def test_disagreeing_start_fields_are_named_in_the_message_log(session_factory):
    with session_factory() as session:
        rows = {m.message_control_id: m for m in session.scalars(select(Hl7Message))}
    assert rows["TZ0006"].outcome == "AA"
    assert (
        "TQ1-7 20261025100000+0100 and ORC-7.4 20261025110000+0100 disagree" in rows["TZ0006"].error
    )
    assert rows["TZ0005"].error == ""  # the same instant in two offsets
    assert rows["TZ0000"].error == ""


def test_time_ranges_around_the_spring_switch(scp):
    found = c_find(scp.address, _query("20260329", "0100-0400"))
    assert found.final_status == Status.SUCCESS
    assert [s[:2] for s in _steps(found)] == [
        ("SMAR1", "20260329013000"),
        ("SMAR3", "20260329021500"),
        ("SMAR2", "20260329033000"),
    ]
    # Read in UTC: 00:00-01:00 UTC is 01:00-03:00 in Zurich that night; the answer
    # is written in the query's offset and says so.
    utc = c_find(scp.address, _query("20260329", "0000-0100", offset="+0000"))
    assert _steps(utc) == [
        ("SMAR1", "20260329003000", "+0000"),
        ("SMAR3", "20260329011500", "+0000"),
    ]


def test_time_ranges_around_the_autumn_switch(scp):
    found = c_find(scp.address, _query("20261025", "0200-0300"))
    assert sorted(s[0] for s in _steps(found)) == ["SOCT1", "SOCT2"]
    # A range across midnight, read at +0100: 2026-10-24 23:00 .. 2026-10-25 03:30 (+0100)
    # is 2026-10-25 00:00 .. 03:30 in Zurich (CET after 03:00 CEST).
    ranged = c_find(scp.address, _query("20261024-20261025", "2300-0330", offset="+0100"))
    assert sorted(s[0] for s in _steps(ranged)) == ["SOCT1", "SOCT2"]


def test_a_profile_gets_the_offset_of_each_steps_start(scp):
    found = c_find(scp.address, _query("20260329", ""), calling_ae="TZSCU")
    assert _steps(found) == [
        ("SMAR1", "20260329013000", "+0100"),
        ("SMAR3", "20260329021500", "+0100"),  # a time that does not exist that night
        ("SMAR2", "20260329033000", "+0200"),
    ]
    plain = c_find(scp.address, _query("20260329", ""))
    assert {s[2] for s in _steps(plain)} == {""}


def test_a_malformed_offset_fails(scp):
    bad = c_find(scp.address, _query("20260329", "", offset="UTC+1"))
    assert bad.final_status == 0xA900
    assert bad.statuses[-1].OffendingElement == 0x00080201


@FINDSCU.required
def test_findscu_range_queries_around_the_switch(scp, tmp_path: Path):
    def findscu(folder: Path, *keys: str) -> list[tuple[str, str, str]]:
        folder.mkdir()
        args = [str(FINDSCU), "-W", "-aet", "DCMTKSCU", "-aec", "MWLTEST", "-X", "-od", str(folder)]
        args += ["-to", "20", "-ta", "20", "-td", "20", scp.address[0], str(scp.address[1])]
        for key in (
            *keys,
            "PatientID",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        ):
            args += ["-k", key]
        done = subprocess.run(
            args, capture_output=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"}
        )
        assert done.returncode == 0, (done.stdout + done.stderr).decode("latin-1")
        out = []
        for file in sorted(folder.glob("rsp*.dcm")):
            ds = dcmread(file)
            step = ds.ScheduledProcedureStepSequence[0]
            out.append(
                (
                    step.ScheduledProcedureStepID,
                    step.ScheduledProcedureStepStartDate + step.ScheduledProcedureStepStartTime,
                    ds.get("TimezoneOffsetFromUTC", ""),
                )
            )
        return sorted(out)

    date = "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate"
    time = "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime"
    assert findscu(tmp_path / "spring", f"{date}=20260329", f"{time}=0300-0400") == [
        ("SMAR2", "20260329033000", "")
    ]
    # 00:00-04:00 UTC is 02:00 CEST .. 05:00 CET in Zurich. The two steps of the
    # repeated hour are both held as 02:30 and written as its later reading.
    assert findscu(
        tmp_path / "utc", "(0008,0201)=+0000", f"{date}=20261025", f"{time}=0000-0400"
    ) == [
        ("SOCT1", "20261025013000", "+0000"),
        ("SOCT2", "20261025013000", "+0000"),
        ("SOCT3", "20261025030000", "+0000"),
    ]
