"""Device profile checks (mwl.worklist.device): what a modality would drop or truncate."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR

from mwl.admin.overrides import to_plain
from mwl.config import DicomAeProfile, Settings, convert_setting
from mwl.domain import SpsStatus, WorklistItem
from mwl.operations import metrics
from mwl.worklist.device import (
    CODECS,
    DROPPED,
    REPLACED,
    TRUNCATED,
    VR,
    DeviceLimits,
    Finding,
    check_item,
    limits_for_ae,
    limits_of,
    station_limits,
)
from mwl.worklist.fields import FIELDS, TEXT_KINDS

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "profiles"


def test_the_vr_table_is_the_dicom_dictionarys():
    text_keywords = {k for f in FIELDS if f.kind in TEXT_KINDS for k in f.keywords}
    assert set(VR) == text_keywords
    for keyword, vr in VR.items():
        assert dictionary_VR(keyword) == vr, keyword


def test_the_codecs_are_pydicoms():
    for term, codec in CODECS.items():
        if term in ("", "ISO_IR 6"):
            # ISO 646 (ASCII) itself: pydicom reads it as Latin-1, leniently; a device
            # declaring it takes no byte above 0x7F, which is what the check must know.
            assert codec == "ascii", term
        else:
            assert python_encoding[term] == codec, term


def _item(**values: object) -> WorklistItem:
    base: dict[str, object] = {f.name: "" for f in FIELDS}
    base.update(
        requested_procedure_code=None,
        scheduled_protocol_codes=(),
        scheduled_procedure_step_status=SpsStatus.SCHEDULED,
        start=dt.datetime(2026, 11, 24, 10, 0),
        patient_name="Müller-Lüdenscheidt^Hans-Jörg",
        patient_id="P1",
        accession_number="ACC0000000000001",
        study_instance_uid="1.2.3",
        step_key=1,
    )
    base.update(values)
    fields = set(WorklistItem.__dataclass_fields__)
    return WorklistItem(**{k: v for k, v in base.items() if k in fields})  # type: ignore[arg-type]


def test_each_limit_is_found():
    limits = DeviceLimits(
        max_length={"AccessionNumber": 10},
        max_pn_component_length=16,
        max_sh_length=14,
        forbidden_characters="ü",
        required_keys=("StudyInstanceUID", "AdmissionID"),
        charset="ISO_IR 100",
    )
    item = _item(patient_name="Müller-Lüdenscheidt^Ödön^Lőrinc")  # ő: not in Latin-1
    found = {(f.keyword, f.problem, f.effect) for f in check_item(item, limits)}
    assert found == {
        ("AccessionNumber", "too long", TRUNCATED),
        ("PatientName", "component too long", TRUNCATED),  # Müller-Lüdenscheidt: 19
        ("PatientName", "forbidden character", DROPPED),
        ("PatientName", "not in charset", REPLACED),
        ("AdmissionID", "missing", DROPPED),
    }
    assert check_item(_item(), DeviceLimits()) == []
    assert str(Finding("AccessionNumber", "too long", TRUNCATED, "10")) == (
        "AccessionNumber: too long (10), truncated"
    )


def test_lo_limit_applies_to_each_allergy():
    limits = DeviceLimits(max_lo_length=8)
    assert check_item(_item(allergies="Iodine\\Latex"), limits) == []
    (finding,) = check_item(_item(allergies="Iodine\\Penicillin"), limits)
    assert (finding.keyword, finding.limit) == ("Allergies", "8")


def test_profile_keys_round_trip_and_find_the_station():
    rows = [
        {
            "ae_title": "CT01",
            "max_length": {"PatientName": 32},
            "max_lo_length": 20,
            "forbidden_characters": "^",
            "required_keys": ["StudyInstanceUID"],
            "response_charset": "ISO_IR 100",
        },
        {"ae_title": "NOLIMIT"},
    ]
    profiles = convert_setting("dicom_ae_profiles", rows)
    assert convert_setting("dicom_ae_profiles", to_plain("dicom_ae_profiles", profiles)) == profiles
    settings = Settings(dicom_ae_profiles=profiles)
    assert set(station_limits(settings)) == {"CT01"}
    limits = limits_for_ae(settings, "CT01")
    assert limits is not None and limits.charset == "ISO_IR 100"
    assert limits.max_length == {"PatientName": 32}
    assert limits_for_ae(settings, "NOLIMIT") is None


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_sample_profiles_load_cite_a_source_and_find_something(path: Path):
    text = path.read_text()
    assert "Source:" in text and "Conformance Statement" in text
    (row,) = tomllib.loads(text)["dicom"]["ae_profiles"]
    (profile,) = convert_setting("dicom_ae_profiles", [row])
    limits = limits_of(profile)
    assert limits.declared
    long = "X" * 70
    item = _item(
        patient_name=long, patient_id=long, accession_number=long, referring_physician_name=long
    )
    assert {f.keyword for f in check_item(item, limits)} == set(limits.max_length)


def test_the_gauge_has_one_series_per_station(tmp_path):
    from prometheus_client import generate_latest

    from mwl.store.engine import make_engine, make_session_factory
    from mwl.store.migrate import upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    metrics.configure(enabled=True)
    metrics.watch_database(engine, make_session_factory(engine))
    metrics.watch_profile_checks(lambda session: {"CT01": 2, "MR01": 0})
    try:
        text = generate_latest(metrics.REGISTRY).decode()
    finally:
        metrics.DATABASE._failing = None
        engine.dispose()
    assert 'mwl_items_failing_profile{calling_ae="CT01"} 2.0' in text
    assert 'mwl_items_failing_profile{calling_ae="MR01"} 0.0' in text
    assert DicomAeProfile("X").max_length == ()


def test_failing_counts_checks_the_open_steps_of_each_station(tmp_path):
    from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep
    from mwl.orders.apply import apply_order
    from mwl.store.engine import make_engine, make_session_factory
    from mwl.store.migrate import upgrade
    from mwl.worklist.device import failing_counts

    engine = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    upgrade(engine)
    factory = make_session_factory(engine, writer=True)
    for accession, station in (
        ("ACC-LONG-0001", "CT01"),
        ("A2", "CT01"),
        ("ACC-LONG-0003", "MR01"),
    ):
        step = ScheduledStep(
            f"S{accession}",
            modality="CT",
            scheduled_station_ae_title=station,
            start=dt.datetime(2026, 11, 24, 9, 0),
        )
        procedure = RequestedProcedure(
            "", accession, accession, placer_order_number=f"PL{accession}", steps=(step,)
        )
        order = Order(
            "NW",
            "SC",
            PatientDemographics(f"P{accession}", "HOSP", "Doe^Jane"),
            (procedure,),
            sending_facility="HOSP",
        )
        with factory.begin() as session:
            apply_order(session, order)
    settings = Settings(
        dicom_ae_profiles=(
            DicomAeProfile("CT01", max_length=(("AccessionNumber", 8),)),
            DicomAeProfile("MR01"),  # no limits: not counted
        )
    )
    with make_session_factory(engine)() as session:
        assert failing_counts(session, settings) == {"CT01": 1}
    engine.dispose()
