"""Property: SQL matching (find_items) agrees with a plain in-Python matcher, on both backends.

The stored items are a fixed, deterministic pool full of traps (case variants,
accents, literal ``%``, ``_``, ``*``, ``?`` and backslash, empty Type 2 values,
every step status); hypothesis draws the queries.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from mwl.domain import (
    HIDDEN_BY_DEFAULT,
    KeyMatch,
    MatchKind,
    SpsStatus,
    WorklistItem,
    WorklistQuery,
)
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import Patient, RequestedProcedure, ScheduledProcedureStep
from mwl.worklist.matching import PATIENT_NAME, START_TIME, STATUS, find_items
from mwl.worklist.names import name_search_key

NAMES = [
    "Müller^Hans",
    "MULLER^HANS",
    "muller",
    "Doe^Jane",
    "Doe^John^J",
    "DOE",
    "Øster^Émile",
    "a_b^c%d",
    "x*y^z?w",
    "",
    "Ñandú^José",
    "Yamada^Tarou=山田^太郎",
    "Doe^^Mr",
]
TEXT = {
    "patient_id": ["P1", "P2", "p1", "P_1", "P%"],
    "accession_number": ["ACC1", "ACC_1", "ACC%1", "acc1", "", "AC\\1", "AC[1]"],
    "modality": ["CT", "MR", "ct", "", "C_T"],
    "scheduled_station_ae_title": ["CT01", "CT02", "CT*", "ct01", "", "CT?1"],
    "scheduled_procedure_step_description": ["CT head", "CT_head", "CT%head", "ct head", ""],
}
BIRTH_DATES = ["19700101", "19800202", "", "20000229", "19991231"]
BASE = dt.datetime(2026, 11, 20, 0, 0)
POOL_SIZE = 120


def _pool() -> list[dict[str, object]]:
    rng = random.Random(20261121)
    rows = []
    for i in range(POOL_SIZE):
        row: dict[str, object] = {a: rng.choice(v) for a, v in TEXT.items()}
        row["patient_name"] = rng.choice(NAMES)
        row["patient_birth_date"] = rng.choice(BIRTH_DATES)
        row["start"] = BASE + dt.timedelta(minutes=15 * rng.randrange(0, 4 * 24 * 3))
        row["status"] = rng.choice(list(SpsStatus))
        row["sps_id"] = f"S{i:03d}"
        rows.append(row)
    return rows


POOL = _pool()


@pytest.fixture(scope="module")
def pool_engine(module_database_url: str) -> Iterator[Engine]:
    """The pool, stored straight through the models (it needs statuses orders cannot make)."""
    engine = make_engine(module_database_url)
    with make_session_factory(engine, writer=True).begin() as session:
        for i, row in enumerate(POOL):
            patient = Patient(
                patient_id=str(row["patient_id"]),
                issuer_of_patient_id=f"I{i}",
                patient_name=str(row["patient_name"]),
                patient_name_key=name_search_key(str(row["patient_name"])),
                patient_birth_date=str(row["patient_birth_date"]),
            )
            procedure = RequestedProcedure(
                patient=patient,
                study_instance_uid=f"1.2.826.0.1.{i}",
                requested_procedure_id=f"RP{i}",
                accession_number=str(row["accession_number"]),
            )
            start = row["start"]
            assert isinstance(start, dt.datetime)
            procedure.steps.append(
                ScheduledProcedureStep(
                    scheduled_procedure_step_id=str(row["sps_id"]),
                    modality=str(row["modality"]),
                    scheduled_station_ae_title=str(row["scheduled_station_ae_title"]),
                    scheduled_procedure_step_description=str(
                        row["scheduled_procedure_step_description"]
                    ),
                    start_datetime=start,
                    start_time=start.strftime("%H%M%S"),
                    status=str(row["status"]),
                )
            )
            session.add(procedure)
    yield engine
    engine.dispose()


# --- the reference matcher: PS3.4 C.2.2.2 as plainly as it can be written ---------


def _regex(value: str, wildcards: bool) -> str:
    if not wildcards:
        return re.escape(value)
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)


def _name_matches(stored: str, key: KeyMatch) -> bool:
    folded_stored = name_search_key(stored)
    if not folded_stored:
        return False
    for value in key.values:
        folded = name_search_key(value).split("=")[0]
        if not folded:
            pattern = ".*"
        else:
            pattern = r"\^".join(
                _regex(c, key.kind is MatchKind.WILDCARD) if c else ".*" for c in folded.split("^")
            )
        for candidate in (pattern, pattern + r"\^.*", pattern + "=.*"):
            if re.fullmatch(candidate, folded_stored, re.DOTALL):
                return True
    return False


def _value(row: dict[str, object], attribute: str) -> str:
    if attribute == START_TIME:
        start = row["start"]
        assert isinstance(start, dt.datetime)
        return start.strftime("%H%M%S")
    if attribute == STATUS:
        return str(row["status"])
    return str(row[attribute])


def reference(query: WorklistQuery) -> list[str]:
    found = []
    for row in POOL:
        ok = True
        for key in query.keys:
            if key.attribute == PATIENT_NAME:
                ok = _name_matches(str(row["patient_name"]), key)
            else:
                value = _value(row, key.attribute)
                if value == "":
                    ok = False  # K.2.2.1.1.1: an unknown value matches no non-universal key
                elif key.kind is MatchKind.SINGLE:
                    ok = value == key.values[0]
                elif key.kind is MatchKind.UID_LIST:
                    ok = value in key.values
                elif key.kind is MatchKind.WILDCARD:
                    ok = re.fullmatch(_regex(key.values[0], True), value, re.DOTALL) is not None
                else:
                    ok = (key.low is None or value >= key.low) and (
                        key.high is None or value <= key.high
                    )
            if not ok:
                break
        status = row["status"]
        if query.statuses:
            ok = ok and status in query.statuses
        elif not any(k.attribute == STATUS for k in query.keys):
            ok = ok and status not in HIDDEN_BY_DEFAULT
        start = row["start"]
        assert isinstance(start, dt.datetime)
        if query.start_from is not None:
            ok = ok and start >= query.start_from
        if query.start_until is not None:
            ok = ok and start <= query.start_until
        if ok:
            found.append(row)
    found.sort(key=lambda r: (r["start"], r["sps_id"]))
    if query.limit is not None:
        found = found[: query.limit]
    return [str(r["sps_id"]) for r in found]


# --- strategies ----------------------------------------------------------------------

_WILD_ALPHABET = st.sampled_from(list("ACTMPcth0_%\\[*?1 ^") + ["*", "?", "Ü", "é"])


def _wildcard_of(values: list[str]) -> st.SearchStrategy[str]:
    def mutate(base: str, positions: list[int], marks: list[str]) -> str:
        chars = list(base)
        for pos, mark in zip(positions, marks, strict=False):
            if chars:
                chars[pos % len(chars)] = mark
        return "".join(chars) or "*"

    from_pool = st.builds(
        mutate,
        st.sampled_from([v for v in values if v]),
        st.lists(st.integers(0, 20), max_size=3),
        st.lists(st.sampled_from(["*", "?"]), max_size=3),
    )
    return st.one_of(from_pool, st.text(_WILD_ALPHABET, min_size=1, max_size=6))


def _text_key(attribute: str) -> st.SearchStrategy[KeyMatch]:
    values = TEXT[attribute]
    plain = st.sampled_from([v for v in values if v] + ["X", "ACC", "CT0"])
    return st.one_of(
        plain.map(lambda v: KeyMatch(attribute, MatchKind.SINGLE, (v,))),
        st.lists(plain, min_size=1, max_size=3).map(
            lambda vs: KeyMatch(attribute, MatchKind.UID_LIST, tuple(vs))
        ),
        _wildcard_of(values).map(lambda v: KeyMatch(attribute, MatchKind.WILDCARD, (v,))),
    )


_name_values = st.one_of(
    st.sampled_from([n for n in NAMES if n] + ["mül*", "^J*", "d?e", "MULLER", "Doe^", "x\\*y"]),
    st.text(st.sampled_from(list("DOEmülr^*?_%=")), min_size=1, max_size=6),
)
_name_key = st.builds(
    lambda v, wild: KeyMatch(
        PATIENT_NAME,
        MatchKind.WILDCARD if wild and ("*" in v or "?" in v) else MatchKind.SINGLE,
        (v,),
    ),
    _name_values,
    st.booleans(),
)
_digits8 = st.sampled_from(BIRTH_DATES[:2] + ["19750615", "20000229", "2"])
_birth_key = st.builds(
    lambda lo, hi: KeyMatch("patient_birth_date", MatchKind.RANGE, low=lo, high=hi),
    st.none() | _digits8,
    st.none() | _digits8,
)
_hhmmss = st.builds(
    lambda h, m: f"{h:02d}{m:02d}00", st.integers(0, 23), st.sampled_from([0, 15, 59])
)
_time_key = st.builds(
    lambda lo, hi: KeyMatch(START_TIME, MatchKind.RANGE, low=lo, high=hi),
    st.none() | _hhmmss,
    st.none() | _hhmmss,
)
_key = st.one_of(
    *[_text_key(a) for a in TEXT],
    _name_key,
    _name_key,
    _birth_key,
    _time_key,
)
_instant = st.builds(
    lambda minutes: BASE + dt.timedelta(minutes=minutes), st.integers(-60, 4 * 24 * 60)
)
queries = st.builds(
    WorklistQuery,
    keys=st.lists(_key, max_size=3).map(tuple),
    start_from=st.none() | _instant,
    start_until=st.none() | _instant,
    statuses=st.frozensets(st.sampled_from(list(SpsStatus)), max_size=3),
    limit=st.none() | st.integers(1, 10),
)


@pytest.mark.slow  # 250 queries on each backend
@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(query=queries)
def test_sql_matching_agrees_with_the_reference(pool_engine, query):
    with make_session_factory(pool_engine)() as session:
        got = [item.scheduled_procedure_step_id for item in find_items(session, query)]
    assert got == reference(query)


def test_reference_is_not_vacuous(pool_engine):
    """The pool gives the property something to find: every kind of key hits and misses."""
    everything = reference(WorklistQuery())
    assert 20 < len(everything) < POOL_SIZE
    name = KeyMatch(PATIENT_NAME, MatchKind.SINGLE, ("MULLER",))
    assert 0 < len(reference(WorklistQuery(keys=(name,)))) < len(everything)
    literal = KeyMatch("accession_number", MatchKind.WILDCARD, ("ACC_*",))
    got = reference(WorklistQuery(keys=(literal,)))
    assert got and all(r["accession_number"] == "ACC_1" for r in POOL if r["sps_id"] in got)
    with make_session_factory(pool_engine)() as session:
        items: list[WorklistItem] = find_items(session, WorklistQuery(keys=(literal,)))
    assert [i.scheduled_procedure_step_id for i in items] == got
