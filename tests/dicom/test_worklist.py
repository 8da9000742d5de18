"""find_items: PS3.4 C.2.2.2 matching in SQL on the sample worklist, SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from mwl.domain import Code, KeyMatch, MatchKind, SpsStatus, WorklistItem, WorklistQuery
from mwl.store.engine import make_session_factory
from mwl.worklist.matching import START_TIME, find_items


@pytest.fixture(scope="module")
def run(module_engine: Engine):
    factory = make_session_factory(module_engine)

    def run(query: WorklistQuery) -> list[WorklistItem]:
        with factory() as session:
            return find_items(session, query)

    return run


def ids(items: list[WorklistItem]) -> list[str]:
    return [i.scheduled_procedure_step_id for i in items]


def key(attribute: str, kind: MatchKind, *values: str, low=None, high=None) -> KeyMatch:
    return KeyMatch(attribute, kind, tuple(values), low=low, high=high)


def q(*keys: KeyMatch, **kw) -> WorklistQuery:
    return WorklistQuery(keys=keys, **kw)


def test_universal_query_returns_visible_steps_ordered_by_start(run):
    assert ids(run(q())) == ["S6", "S1", "S2", "S5", "S3", "S4"]


def test_items_are_complete_and_detached(run):
    (item,) = run(q(key("patient_id", MatchKind.SINGLE, "P1")))
    assert item.patient_name == "Müller^Hans"
    assert item.start == dt.datetime(2026, 11, 21, 9, 0)
    assert item.requested_procedure_code == Code("RPC1", "99LOCAL", "CT Head")
    assert item.scheduled_protocol_codes == (
        Code("P-HEAD", "99LOCAL", "Head protocol"),
        Code("P-CON", "99LOCAL", "Contrast"),
    )
    assert item.scheduled_procedure_step_status is SpsStatus.SCHEDULED
    assert item.study_instance_uid.startswith("2.25.")


def test_single_value_is_case_sensitive(run):
    assert ids(run(q(key("modality", MatchKind.SINGLE, "CT")))) == ["S1", "S5"]
    assert run(q(key("modality", MatchKind.SINGLE, "ct"))) == []


def test_wildcards_are_case_sensitive_outside_names(run):
    assert ids(run(q(key("accession_number", MatchKind.WILDCARD, "ACC?")))) == [
        "S6",
        "S1",
        "S2",
        "S3",
        "S4",
    ]
    assert run(q(key("accession_number", MatchKind.WILDCARD, "acc*"))) == []


def test_literal_percent_and_underscore_are_escaped(run):
    found = run(q(key("scheduled_procedure_step_description", MatchKind.WILDCARD, "MR knee_left*")))
    assert ids(found) == ["S2"]  # not S3's "MR kneeXleft"
    found = run(q(key("scheduled_procedure_step_description", MatchKind.WILDCARD, "* 100%")))
    assert ids(found) == ["S2"]  # not "100X"


def test_empty_stored_value_never_matches_a_non_universal_key(run):
    assert "S5" not in ids(run(q(key("accession_number", MatchKind.WILDCARD, "**"))))
    assert "S5" not in ids(run(q(key("patient_birth_date", MatchKind.RANGE, high="20991231"))))
    assert "S5" in ids(run(q()))


def test_uid_list(run):
    everything = run(q())
    uids = [everything[0].study_instance_uid, everything[-1].study_instance_uid]
    assert ids(run(q(key("study_instance_uid", MatchKind.UID_LIST, *uids)))) == ["S6", "S4"]


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("MÜLLER", MatchKind.SINGLE, ["S1"]),
        ("muller^hans", MatchKind.SINGLE, ["S1"]),
        ("Müller^Hans^Peter", MatchKind.SINGLE, []),
        ("mül*", MatchKind.WILDCARD, ["S1"]),
        ("M?LLER", MatchKind.WILDCARD, ["S1"]),
        ("Doe", MatchKind.SINGLE, ["S6", "S2", "S3"]),
        ("DOE^JANE", MatchKind.SINGLE, ["S2", "S3"]),
        ("^John", MatchKind.SINGLE, ["S6", "S5"]),
        ("Do", MatchKind.SINGLE, []),  # a component is matched whole
        ("øster", MatchKind.SINGLE, ["S4"]),
        ("OSTER^EMILE", MatchKind.SINGLE, ["S4"]),
        ("*^J*", MatchKind.WILDCARD, ["S6", "S2", "S5", "S3"]),
    ],
)
def test_patient_name_policy(run, value, kind, expected):
    assert ids(run(q(key("patient_name", kind, value)))) == expected


def test_combined_start_range_and_time_only(run):
    combined = run(
        q(
            start_from=dt.datetime(2026, 11, 21, 10, 0),
            start_until=dt.datetime(2026, 11, 22, 9, 0),
        )
    )
    assert ids(combined) == ["S2", "S5", "S3"]
    timed = run(q(key(START_TIME, MatchKind.RANGE, low="140000", high="235959")))
    assert ids(timed) == ["S2", "S5"]


def test_statuses_default_hides_and_named_status_shows(run):
    assert "S7" not in ids(run(q()))
    assert ids(run(q(statuses=frozenset({SpsStatus.CANCELED})))) == ["S7"]
    assert ids(run(q(key("scheduled_procedure_step_status", MatchKind.SINGLE, "HELD")))) == []


def test_limit(run):
    assert ids(run(q(limit=2))) == ["S6", "S1"]


def test_one_statement_whatever_the_query(module_engine):
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(module_engine, "before_cursor_execute", count)
    try:
        with Session(module_engine) as session:
            found = find_items(
                session,
                q(
                    key("patient_name", MatchKind.WILDCARD, "D*"),
                    key("modality", MatchKind.UID_LIST, "MR", "CR"),
                ),
            )
    finally:
        event.remove(module_engine, "before_cursor_execute", count)
    assert ids(found) == ["S6", "S2", "S3"]
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1
    assert "patient_name_key" in selects[0] and "modality" in selects[0]
