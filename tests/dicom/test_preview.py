"""Test as a scanner: the preview equals a real C-FIND, and explanations name the right key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom.status import Status
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import DicomAeProfile, Settings
from mwl.dicom.handlers import FAILURE_IDENTIFIER_DOES_NOT_MATCH, REFUSED_NOT_AUTHORIZED
from mwl.dicom.preview import (
    CALLING_AE,
    IDENTIFIER,
    MAX_MATCHES,
    SPS_START,
    STATUS_FILTER,
    Explanation,
    QueryPreview,
    WorklistPreviewer,
    explain_exclusion,
    response_rows,
)
from mwl.dicom.scp import WorklistScp
from mwl.dicom.stored_identifier import dataset_from_json
from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.operations.querylog import latest_query
from mwl.orders.apply import apply_order
from mwl.store.engine import make_session_factory
from mwl.store.models import ScheduledProcedureStep
from tests.rawscu import association_rejection

pytestmark = pytest.mark.e2e

PROFILES = (
    DicomAeProfile("CT01", response_charset="ISO_IR 100", calling_ae_as_station=True),
    DicomAeProfile("LIMITED", max_matches=2),
    DicomAeProfile("STATUSES", visible_statuses=("SCHEDULED", "CANCELED")),
    DicomAeProfile("WINDOW", date_window_days=2),
)


@pytest.fixture(scope="module")
def worklist(module_engine: Engine) -> sessionmaker[Session]:
    """The sample worklist plus two steps today and tomorrow (for the date window)."""
    writer = make_session_factory(module_engine, writer=True)
    today = dt.datetime.combine(dt.date.today(), dt.time(12, 0))
    steps = (
        ScheduledStep("T1", modality="CT", scheduled_station_ae_title="CT01", start=today),
        ScheduledStep(
            "T2",
            modality="CT",
            scheduled_station_ae_title="CT01",
            start=today + dt.timedelta(days=1),
        ),
        ScheduledStep(
            "T3",
            modality="CT",
            scheduled_station_ae_title="CT01",
            start=today + dt.timedelta(days=2),
        ),
    )
    order = Order(
        "NW",
        "SC",
        PatientDemographics("P7", "HOSP", "Today^Tom"),
        (RequestedProcedure("", "RP7", "ACC7", placer_order_number="PL7", steps=steps),),
        sending_facility="HOSP",
    )
    with writer.begin() as session:
        apply_order(session, order)
    return make_session_factory(module_engine)


@pytest.fixture(scope="module")
def settings(module_settings: Settings) -> Settings:
    return module_settings.replace(dicom_ae_profiles=PROFILES)


@pytest.fixture(scope="module")
def server(worklist: sessionmaker[Session], settings: Settings) -> Iterator[WorklistScp]:
    scp = WorklistScp(settings, worklist)
    scp.start()
    try:
        yield scp
    finally:
        scp.shutdown()


@pytest.fixture(scope="module")
def previewer(worklist: sessionmaker[Session], settings: Settings) -> WorklistPreviewer:
    return WorklistPreviewer(settings, worklist)


def step_key(factory: sessionmaker[Session], sps_id: str) -> int:
    with factory() as session:
        return session.scalars(
            select(ScheduledProcedureStep.id).where(
                ScheduledProcedureStep.scheduled_procedure_step_id == sps_id
            )
        ).one()


def sent(identifiers: list[Dataset]) -> list[tuple[str, str]]:
    return [
        (d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID, d.AccessionNumber)
        for d in identifiers
    ]


def previewed(result: QueryPreview) -> list[tuple[str, str]]:
    return [(p.item.scheduled_procedure_step_id, p.item.accession_number) for p in result.items]


CASES = [
    ("PLAIN", {}),
    ("PLAIN", {"sps_Modality": "CT"}),
    ("PLAIN", {"sps_Modality": "MR\\US"}),
    ("PLAIN", {"sps_ScheduledStationAETitle": "MR01"}),
    ("PLAIN", {"sps_ScheduledProcedureStepStartDate": "20261121"}),
    ("PLAIN", {"sps_ScheduledProcedureStepStartDate": "20261121-20261122"}),
    (
        "PLAIN",
        {
            "sps_ScheduledProcedureStepStartDate": "20261121",
            "sps_ScheduledProcedureStepStartTime": "1000-2359",
        },
    ),
    ("PLAIN", {"PatientName": "doe*"}),
    ("PLAIN", {"PatientName": "MULLER", "PatientSex": "M"}),
    ("PLAIN", {"sps_ScheduledProcedureStepStatus": "CANCELED"}),
    ("PLAIN", {"AccessionNumber": "ACC2", "sps_Modality": "MR"}),
    ("CT01", {}),
    ("CT01", {"sps_ScheduledStationAETitle": "CT02"}),
    ("LIMITED", {"sps_Modality": "CT"}),
    ("STATUSES", {"sps_Modality": "CT"}),
    ("WINDOW", {}),
    ("WINDOW", {"sps_ScheduledProcedureStepStartDate": "20261121"}),
]


@pytest.mark.parametrize(("calling", "keys"), CASES)
def test_preview_equals_a_real_c_find(server, previewer, find, identifier, calling, keys):
    ds = identifier(**keys)
    answer = find(server.address, ds, calling_ae=calling)
    result = previewer.preview(calling, ds.to_json(), "127.0.0.1")
    assert answer.final_status == Status.SUCCESS
    assert result.status == Status.SUCCESS and result.succeeded
    assert previewed(result) == sent(answer.identifiers)
    # Not only which steps: each response holds the same keys and values.
    assert [p.response for p in result.items] == [response_rows(d) for d in answer.identifiers]


def test_profile_conditions_are_named(previewer, identifier):
    result = previewer.preview("CT01", identifier().to_json())
    station = [c for c in result.conditions if c.keyword == "ScheduledStationAETitle"]
    assert [(c.kind, c.asked, c.source) for c in station] == [("single", "CT01", "profile")]
    assert result.charset == "ISO_IR 100" and result.profile_known
    limited = previewer.preview("LIMITED", identifier().to_json())
    assert limited.truncated and len(limited.items) == 2
    limit = [c for c in limited.conditions if c.keyword == MAX_MATCHES]
    assert [(c.asked, c.source) for c in limit] == [("2", "profile")]
    window = previewer.preview("WINDOW", identifier().to_json())
    (start,) = [c for c in window.conditions if c.keyword == SPS_START]
    assert start.source == "profile"
    assert start.low == f"{dt.date.today().isoformat()} 00:00"
    plain = previewer.preview("PLAIN", identifier(sps_Modality="CT").to_json())
    assert not plain.truncated and not plain.profile_known
    (status,) = [c for c in plain.conditions if c.keyword == STATUS_FILTER]
    assert status.kind == "hidden" and "CANCELED" in status.asked


def test_unsupported_keys_are_listed_as_ignored(previewer, identifier):
    ds = identifier(PatientComments="anything")  # not a worklist matching key
    ignored = [
        c for c in previewer.preview("PLAIN", ds.to_json()).conditions if c.kind == "ignored"
    ]
    assert [c.keyword for c in ignored] == ["PatientComments"]


@pytest.mark.parametrize(
    "keys",
    [
        {"sps_ScheduledProcedureStepStartDate": "2026-13-45"},
        {"sps_ScheduledStationAETitle": "CT01\\CT02"},
    ],
)
def test_bad_identifier_gives_the_same_failure(server, previewer, find, identifier, keys):
    ds = identifier(**keys)
    answer = find(server.address, ds, calling_ae="PLAIN")
    result = previewer.preview("PLAIN", ds.to_json())
    assert answer.final_status == FAILURE_IDENTIFIER_DOES_NOT_MATCH
    assert result.status == FAILURE_IDENTIFIER_DOES_NOT_MATCH and not result.succeeded
    assert result.error_comment == answer.statuses[-1].ErrorComment
    assert (
        result.reason.startswith(result.error_comment)
        and "single value" in (result.reason)
        or "not a date (DA: YYYYMMDD or a range of them)" in result.reason
    )
    assert result.offending_keyword in (
        "ScheduledProcedureStepStartDate",
        "ScheduledStationAETitle",
    )
    assert result.items == ()


def test_undecodable_identifier(previewer, identifier):
    for text in ("", "not json", "[1, 2]", '{"00100010": {"Value": ["x"]}}'):
        result = previewer.preview("PLAIN", text)
        assert result.status == FAILURE_IDENTIFIER_DOES_NOT_MATCH
        assert result.error_comment == "the Identifier cannot be decoded"


def test_logged_identifier_previews_as_it_was_answered(
    server, previewer, worklist, find, identifier
):
    ds = identifier(sps_Modality="CT", PatientName="*")
    answer = find(server.address, ds, calling_ae="LOGGED")
    with worklist() as session:
        logged = latest_query(session, "LOGGED")
    assert logged is not None and logged.matches == len(answer.identifiers)
    result = previewer.preview("LOGGED", logged.identifier_json, logged.peer_host)
    assert previewed(result) == sent(answer.identifiers)
    # The preview logs nothing: the newest row is still the real C-FIND.
    with worklist() as session:
        again = latest_query(session, "LOGGED")
    assert again is not None and again.key == logged.key


def test_edited_keys_replace_the_stored_ones(server, previewer, find, identifier):
    stored = identifier(sps_Modality="MR", PatientSex="F").to_json()
    edited = previewer.identifier_with_keys(
        stored, {"Modality": "CT", "ScheduledStationAETitle": "CT02", "PatientName": ""}
    )
    ds = dataset_from_json(edited)
    assert ds.ScheduledProcedureStepSequence[0].Modality == "CT"
    assert ds.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT02"
    assert ds.PatientSex == "F"  # a key the form does not show stays as sent
    answer = find(server.address, ds, calling_ae="PLAIN")
    assert previewed(previewer.preview("PLAIN", edited)) == sent(answer.identifiers) == []
    from_nothing = previewer.identifier_with_keys("", {"Modality": "CT"})
    answer = find(server.address, dataset_from_json(from_nothing), calling_ae="PLAIN")
    result = previewer.preview("PLAIN", from_nothing)
    assert previewed(result) == sent(answer.identifiers)
    assert {p.item.scheduled_procedure_step_id for p in result.items} == {
        "S1",
        "S5",
        "T1",
        "T2",
        "T3",
    }
    with pytest.raises(ValueError):
        previewer.identifier_with_keys("", {"NoSuchKey": "x"})


def test_refused_callers(worklist, settings, find, identifier):
    restricted = settings.replace(
        dicom_ae_profiles=(DicomAeProfile("FARAWAY", host="192.0.2.1"),),
        dicom_restrict_calling_ae=True,
    )
    previewer = WorklistPreviewer(restricted, worklist)
    with WorklistScp(restricted, worklist) as scp:
        answer = find(scp.address, identifier(), calling_ae="FARAWAY")
        rejected = association_rejection(scp.address, "STRANGER", "MWLTEST") is not None
    far = previewer.preview("FARAWAY", identifier().to_json(), "127.0.0.1")
    assert answer.final_status == far.status == REFUSED_NOT_AUTHORIZED
    assert far.error_comment == answer.statuses[-1].ErrorComment
    assert rejected and previewer.preview("STRANGER", identifier().to_json()).status is None
    assert previewer.preview("FARAWAY", identifier().to_json(), "192.0.2.1").succeeded
    verdicts = previewer.explain(
        "FARAWAY", identifier().to_json(), step_key(worklist, "S1"), "127.0.0.1"
    )
    assert verdicts is not None
    assert [(v.keyword, v.passed) for v in verdicts.verdicts][0] == (CALLING_AE, False)
    assert verdicts.verdicts[0].held == "FARAWAY (192.0.2.1)"


def failing(explanation: Explanation | None) -> list[str]:
    assert explanation is not None
    assert [v.keyword for v in explanation.failed] == [
        v.keyword for v in explanation.verdicts if not v.passed
    ]
    return [v.keyword for v in explanation.failed]


@pytest.mark.parametrize(
    ("sps_id", "keys", "keyword", "asked", "held"),
    [
        ("S1", {"sps_Modality": "MR"}, "Modality", "MR", "CT"),
        ("S1", {"sps_ScheduledStationAETitle": "CT02"}, "ScheduledStationAETitle", "CT02", "CT01"),
        (
            "S1",
            {"sps_ScheduledProcedureStepStartDate": "20261122"},
            SPS_START,
            "2026-11-22 00:00 - 2026-11-22 23:59",
            "2026-11-21 09:00",
        ),
        ("S7", {"sps_Modality": "CT"}, STATUS_FILTER, None, "CANCELED"),
        ("S1", {"PatientName": "Doe*"}, "PatientName", "Doe*", "Müller^Hans"),
        ("S1", {"PatientBirthDate": "19800202"}, "PatientBirthDate", "1980-02-02", "1970-01-01"),
        ("S5", {"AccessionNumber": "ACC*"}, "AccessionNumber", "ACC*", ""),
    ],
)
def test_explanation_names_the_excluding_key(
    previewer, worklist, identifier, sps_id, keys, keyword, asked, held
):
    query = identifier(**keys).to_json()
    result = previewer.preview("PLAIN", query)
    assert sps_id not in [p.item.scheduled_procedure_step_id for p in result.items]
    verdicts = previewer.explain("PLAIN", query, step_key(worklist, sps_id))
    assert failing(verdicts) == [keyword]
    assert verdicts is not None
    first = verdicts.verdicts[0]
    assert first.held == held
    if asked is not None:
        assert first.condition.asked == asked


def test_matching_item_has_no_failing_condition(previewer, worklist, identifier):
    asked = identifier(
        sps_Modality="CT", PatientName="müll*", sps_ScheduledProcedureStepStartDate="20261121"
    ).to_json()
    verdicts = previewer.explain("PLAIN", asked, step_key(worklist, "S1"))
    assert verdicts is not None and failing(verdicts) == []
    assert {v.keyword for v in verdicts.verdicts} >= {
        "Modality",
        "PatientName",
        SPS_START,
        STATUS_FILTER,
    }


def test_several_failures_come_first_in_query_order(previewer, worklist, identifier):
    asked = identifier(
        PatientID="P1", sps_Modality="MR", sps_ScheduledStationAETitle="CT02"
    ).to_json()
    verdicts = previewer.explain("PLAIN", asked, step_key(worklist, "S1"))
    assert failing(verdicts) == ["Modality", "ScheduledStationAETitle"]
    assert verdicts is not None
    assert [v.passed for v in verdicts.verdicts] == [False, False, True, True]


def test_profile_keys_and_the_match_limit_are_explained(previewer, worklist, identifier):
    everything = identifier().to_json()
    coerced = previewer.explain("CT01", everything, step_key(worklist, "S5"))
    assert failing(coerced) == ["ScheduledStationAETitle"]
    assert coerced is not None and coerced.failed[0].condition.source == "profile"
    limited = previewer.preview("LIMITED", identifier(sps_Modality="CT").to_json())
    returned = [p.item.scheduled_procedure_step_id for p in limited.items]
    assert returned == ["S1", "S5"]
    cut = previewer.explain(
        "LIMITED", identifier(sps_Modality="CT").to_json(), step_key(worklist, "T1")
    )
    assert failing(cut) == [MAX_MATCHES]
    assert cut is not None and cut.failed[0].held == "3"
    # A step left out by a key is not blamed on the limit.
    canceled = previewer.explain("LIMITED", everything, step_key(worklist, "S7"))
    assert failing(canceled) == [STATUS_FILTER]
    shown = previewer.explain("STATUSES", everything, step_key(worklist, "S7"))
    assert failing(shown) == []


def test_verdicts_agree_with_the_preview_for_every_step(previewer, worklist, identifier):
    with worklist() as session:
        steps = session.execute(
            select(ScheduledProcedureStep.id, ScheduledProcedureStep.scheduled_procedure_step_id)
        ).all()
    for calling, keys in CASES:
        asked = identifier(**keys).to_json()
        returned = {p.step_key for p in previewer.preview(calling, asked).items}
        for key, sps_id in steps:
            verdicts = previewer.explain(calling, asked, key)
            assert (failing(verdicts) == []) == (key in returned), (calling, keys, sps_id)


def test_explain_unknown_step_and_bad_identifier(previewer, worklist, settings, identifier):
    assert previewer.explain("PLAIN", identifier().to_json(), 999_999) is None
    bad = identifier(sps_ScheduledProcedureStepStartDate="2026-13-45").to_json()
    verdicts = explain_exclusion(settings, worklist, "PLAIN", bad, step_key(worklist, "S1"))
    assert verdicts is not None and len(verdicts) == 1
    assert verdicts[0].keyword == "ScheduledProcedureStepStartDate" and not verdicts[0].passed
    assert "not a date" in verdicts[0].condition.asked
    garbled = previewer.explain("PLAIN", "not json", step_key(worklist, "S1"))
    assert garbled is not None and failing(garbled) == [IDENTIFIER]
