"""Per-calling-AE profiles: access list, charset, station coercion, statuses, limit, date window."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator

import pytest
from pydicom import dcmread
from pynetdicom.status import Status
from sqlalchemy.engine import Engine

from mwl.config import DicomAeProfile, Settings, load_settings
from mwl.dicom.handlers import REFUSED_NOT_AUTHORIZED
from mwl.dicom.profiles import AeProfile, profile_for
from mwl.dicom.scp import WorklistScp
from mwl.domain import KeyMatch, MatchKind, SpsStatus, WorklistQuery
from mwl.errors import SettingsError
from mwl.store.engine import make_session_factory
from mwl.worklist.matching import START_TIME
from tests.peers import FINDSCU
from tests.rawscu import association_rejection

PROFILES = (
    DicomAeProfile("CT01", response_charset="ISO_IR 100", calling_ae_as_station=True),
    DicomAeProfile("LIMITED", max_matches=2),
    DicomAeProfile("STATUSES", visible_statuses=("CANCELED",)),
    DicomAeProfile("FARAWAY", host="192.0.2.1"),
    DicomAeProfile("LATIN1", response_charset="ISO_IR 100"),
)


@pytest.fixture(scope="module")
def profiled_scp(module_engine: Engine, module_settings: Settings) -> Iterator[WorklistScp]:
    settings = module_settings.replace(dicom_ae_profiles=PROFILES, dicom_restrict_calling_ae=True)
    server = WorklistScp(settings, make_session_factory(module_engine))
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


def sps_ids(result) -> list[str]:
    return [
        d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for d in result.identifiers
    ]


def test_unknown_caller_is_rejected_at_association(profiled_scp, identifier):
    # Rejected permanent, service user, calling AE title not recognised (PS3.8 7.1.1.9).
    assert association_rejection(profiled_scp.address, "STRANGER", "MWLTEST") == (1, 1, 3)


def test_listed_ae_from_another_host_is_refused(profiled_scp, find, identifier):
    result = find(profiled_scp.address, identifier(), calling_ae="FARAWAY")
    assert result.final_status == REFUSED_NOT_AUTHORIZED
    assert result.identifiers == []


def test_calling_ae_as_station_and_latin1(profiled_scp, find, identifier):
    result = find(profiled_scp.address, identifier(), calling_ae="CT01")
    assert result.final_status == Status.SUCCESS
    assert sps_ids(result) == ["S1"]  # only the steps for station CT01 (S7 is canceled)
    (found,) = result.identifiers
    assert found.SpecificCharacterSet == "ISO_IR 100"
    assert str(found.PatientName) == "Müller^Hans"
    # A station named in the query wins over the coercion.
    named = find(
        profiled_scp.address, identifier(sps_ScheduledStationAETitle="MR01"), calling_ae="CT01"
    )
    assert sps_ids(named) == ["S2", "S3"]


def test_max_matches(profiled_scp, find, identifier):
    result = find(profiled_scp.address, identifier(), calling_ae="LIMITED")
    assert result.final_status == Status.SUCCESS
    assert sps_ids(result) == ["S6", "S1"]


def test_visible_statuses(profiled_scp, find, identifier):
    assert sps_ids(find(profiled_scp.address, identifier(), calling_ae="STATUSES")) == ["S7"]


def test_date_window_fills_only_an_open_start():
    profile = AeProfile(charset="ISO_IR 192", date_window_days=2)
    today = dt.date(2026, 11, 21)
    windowed = profile.apply(WorklistQuery(), "X", today=lambda: today)
    assert windowed.start_from == dt.datetime(2026, 11, 21, 0, 0)
    assert windowed.start_until == dt.datetime(2026, 11, 22, 23, 59, 59, 999999)
    asked = WorklistQuery(start_from=dt.datetime(2020, 1, 1))
    assert profile.apply(asked, "X", today=lambda: today) == asked
    timed = WorklistQuery(keys=(KeyMatch(START_TIME, MatchKind.RANGE, low="080000"),))
    assert profile.apply(timed, "X", today=lambda: today) == timed


def test_profile_lookup_and_defaults():
    settings = Settings(dicom_ae_profiles=PROFILES, dicom_max_matches=50)
    assert profile_for(settings, "NOBODY", "127.0.0.1") == AeProfile(
        charset="ISO_IR 192", max_matches=50
    )
    ct = profile_for(settings, "CT01", "127.0.0.1")
    assert (ct.charset, ct.calling_ae_as_station, ct.known) == ("ISO_IR 100", True, True)
    assert profile_for(settings, "FARAWAY", "127.0.0.1").known is False
    assert profile_for(settings, "FARAWAY", "192.0.2.1").known is True
    assert profile_for(settings, "STATUSES", "h").visible_statuses == {SpsStatus.CANCELED}


def test_profiles_from_toml_and_environment(tmp_path):
    config = tmp_path / "mwl.toml"
    config.write_text(
        "[dicom]\n"
        'response_charset = "ISO_IR 100"\n'
        "restrict_calling_ae = true\n"
        "[[dicom.ae_profiles]]\n"
        'ae_title = "CT01"\n'
        "calling_ae_as_station = true\n"
        "date_window_days = 1\n"
        'visible_statuses = ["scheduled", "arrived"]\n',
        encoding="utf-8",
    )
    settings = load_settings(config, environ={})
    assert settings.dicom_response_charset == "ISO_IR 100"
    (profile,) = settings.dicom_ae_profiles
    assert profile == DicomAeProfile(
        "CT01",
        calling_ae_as_station=True,
        date_window_days=1,
        visible_statuses=("SCHEDULED", "ARRIVED"),
    )
    env = {"MWL_DICOM_AE_PROFILES": '[{"ae_title": "US01", "max_matches": 5}]'}
    (from_env,) = load_settings(None, environ=env).dicom_ae_profiles
    assert from_env == DicomAeProfile("US01", max_matches=5)
    with pytest.raises(SettingsError):
        load_settings(None, environ={"MWL_DICOM_AE_PROFILES": '[{"ae_title": "X", "colour": 1}]'})


def test_bad_charset_or_status_fails_at_start(module_settings):
    from sqlalchemy.orm import sessionmaker

    with pytest.raises(SettingsError, match="dicom_response_charset"):
        WorklistScp(module_settings.replace(dicom_response_charset="KLINGON"), sessionmaker())
    bad = module_settings.replace(dicom_ae_profiles=(DicomAeProfile("A", visible_statuses=("X",)),))
    with pytest.raises(SettingsError, match="dicom_ae_profiles"):
        WorklistScp(bad, sessionmaker())


@FINDSCU.required
def test_latin1_profile_through_dcmtk(profiled_scp, tmp_path):
    """Non-ASCII names reach DCMTK in ISO_IR 100 for a caller whose profile asks for it."""
    args = [str(FINDSCU), "-W", "-aet", "LATIN1", "-aec", "MWLTEST", "-to", "20", "-X"]
    args += ["-od", str(tmp_path), *profiled_scp.address[:1], str(profiled_scp.address[1])]
    args += ["-k", "PatientName", "-k", "PatientID=P3", "-k", "ReferringPhysicianName"]
    subprocess.run(
        args, check=True, capture_output=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"}
    )
    (path,) = sorted(tmp_path.glob("rsp*.dcm"))
    assert "Øster^Émile".encode("latin-1") in path.read_bytes()
    response = dcmread(path)
    assert response.SpecificCharacterSet == "ISO_IR 100"
    assert str(response.PatientName) == "Øster^Émile"
    assert str(response.ReferringPhysicianName) == "Welby^Marcus"
