"""Page values of settings: validated, stored, audited, applied over file and environment, live."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import (
    EDITABLE,
    SOURCE_DEFAULT,
    SOURCE_FILE,
    SOURCE_PAGE,
    LiveSettings,
    apply_overrides,
    clear_override,
    current_settings,
    describe_settings,
    load_overrides,
    plain_value,
    set_override,
    set_overrides,
    stored_overrides,
)
from mwl.config import DicomAeProfile, Hl7StationRule, Settings, convert_setting
from mwl.errors import SettingsError
from mwl.operations.audit import events_for_subject
from mwl.store.engine import make_session_factory
from mwl.store.models import AuditEvent, SettingOverride
from tests.databases import migrated_database_url

RICH = Settings(
    dicom_ae_profiles=(
        DicomAeProfile("CT01", "10.0.0.5", "ISO_IR 100", True, 3, ("SCHEDULED", "ARRIVED"), 9),
        DicomAeProfile("MR01"),
    ),
    dicom_restrict_calling_ae=True,
    dicom_max_matches=100,
    dicom_response_charset="ISO_IR 100",
    hl7_modality_map=(("MRI", "MR"), ("CAT", "CT")),
    hl7_order_status=(("XO", "", "SCHEDULED"), ("SC", "IP", "")),
    hl7_station_rules=(Hl7StationRule("MR_W3", "MR ward 3", "MR", "", "WARD3"),),
    hl7_station_from_orc18=True,
    hl7_accepted_senders=("RIS|HOSPITAL", "PACS*|*"),
    hl7_protocol_code_component=1,
    hl7_missing_start="reject",
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database per backend for the module."""
    directory = tmp_path_factory.mktemp("overrides")
    yield from migrated_database_url(request.param, directory, f"mwl_overrides_{os.getpid()}")


@pytest.fixture(autouse=True)
def empty_tables(request: pytest.FixtureRequest) -> None:
    """Each database test starts without page values or audit events."""
    if "session_factory" not in request.fixturenames:
        return
    factory: sessionmaker[Session] = request.getfixturevalue("session_factory")
    with factory.begin() as session:
        session.execute(delete(SettingOverride))
        session.execute(delete(AuditEvent))


def count_events(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def count_rows(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(SettingOverride)) or 0


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize("name", EDITABLE)
def test_toml_form_converts_back_to_the_same_value(name: str) -> None:
    for settings in (Settings(), RICH):
        plain = plain_value(settings, name)
        # What is stored must survive JSON and convert back unchanged.
        assert convert_setting(name, json.loads(json.dumps(plain))) == getattr(settings, name)


def test_apply_overrides_puts_page_values_over_the_base() -> None:
    base = Settings(dicom_max_matches=10, hl7_missing_start="reject")
    applied = apply_overrides(
        base,
        {"dicom_max_matches": "25", "hl7_modality_map": '{"CAT": "CT"}'},
    )
    assert applied.dicom_max_matches == 25
    assert applied.hl7_modality_map == (("CAT", "CT"),)
    assert applied.hl7_missing_start == "reject"  # not on the page: the base value
    assert apply_overrides(base, {}) is base


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"dicom_max_matches": "-1"}, "dicom_max_matches"),
        ({"dicom_max_matches": "not json"}, "dicom_max_matches"),
        ({"dicom_port": "104"}, "dicom_port"),  # file/environment only
        ({"no_such": "1"}, "no_such"),
        ({"dicom_response_charset": '"KLINGON"'}, "dicom_response_charset"),
        ({"dicom_restrict_calling_ae": "true"}, "dicom_restrict_calling_ae"),  # no profiles
        ({"dicom_ae_profiles": '[{"ae_title": "CT01", "host": "ct.local"}]'}, "dicom_ae_profiles"),
        (
            {"dicom_ae_profiles": '[{"ae_title": "CT01", "visible_statuses": ["LOST"]}]'},
            "dicom_ae_profiles",
        ),
        (
            {"dicom_ae_profiles": '[{"ae_title": "CT01"}, {"ae_title": "CT01"}]'},
            "dicom_ae_profiles",
        ),
        ({"hl7_station_rules": '[{"station_ae_title": "A\\\\B"}]'}, "hl7_station_rules"),
        ({"hl7_modality_map": '{"": "CT"}'}, "hl7_modality_map"),
        ({"hl7_missing_start": '"later"'}, "hl7_missing_start"),
        ({"hl7_protocol_code_component": "2"}, "hl7_protocol_code_component"),
    ],
)
def test_apply_overrides_names_the_bad_setting(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as raised:
        apply_overrides(Settings(), overrides)
    assert raised.value.setting == named


def test_current_settings_of_plain_settings_is_themselves() -> None:
    settings = Settings()
    assert current_settings(settings) is settings


# --------------------------------------------------------------------------- storing


def test_set_override_stores_audits_and_applies(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    with session_factory.begin() as session:
        assert set_override(session, "hl7_modality_map", {"CAT": "ct"}, "ada", base=settings)
    with session_factory() as session:
        assert load_overrides(session) == {"hl7_modality_map": '{"CAT": "CT"}'}
        row = stored_overrides(session)["hl7_modality_map"]
        (event,) = events_for_subject(session, "hl7_modality_map")
    assert row.updated_by == "ada" and row.updated_at is not None
    assert (event.action, event.username) == ("settings", "ada")
    assert (event.changes[0].before, event.changes[0].after) == ({"MRI": "MR"}, {"CAT": "CT"})
    assert apply_overrides(settings, {"hl7_modality_map": row.value_json}).hl7_modality_map == (
        ("CAT", "CT"),
    )


def test_changing_again_updates_the_row_and_audits_before_and_after(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    with session_factory.begin() as session:
        set_override(session, "dicom_max_matches", 10, "ada", base=settings)
    with session_factory.begin() as session:
        # Text, as a form or an MWL_* variable gives it.
        set_override(session, "dicom_max_matches", "20", "bob", base=settings)
    with session_factory() as session:
        row = stored_overrides(session)["dicom_max_matches"]
        first, second = events_for_subject(session, "dicom_max_matches")
    assert (row.value_json, row.updated_by) == ("20", "bob")
    assert (first.changes[0].before, first.changes[0].after) == (0, 10)
    assert (second.changes[0].before, second.changes[0].after) == (10, 20)


# (setting, value) pairs the page must refuse.
INVALID = [
    ("dicom_max_matches", -1),
    ("dicom_max_matches", "many"),
    ("dicom_response_charset", "KLINGON"),
    ("dicom_response_charset", ""),
    ("dicom_restrict_calling_ae", True),
    ("hl7_modality_map", {"MRI": "M R"}),
    ("hl7_modality_map", ["MRI", "MR"]),
    ("hl7_order_status", {"NW": "SCHEDULED"}),
    ("hl7_order_status", {"NW_SC": "LOST"}),
    ("hl7_accepted_senders", ["A|B|C"]),
    ("hl7_station_rules", [{"station_ae_title": "CT01", "colour": "red"}]),
    ("hl7_missing_start", "later"),
    ("dicom_ae_profiles", [{"ae_title": "X" * 17}]),
    ("dicom_port", 104),
    ("web_secret_key", "guess"),
]


def test_invalid_value_is_refused_naming_the_setting_and_nothing_is_stored(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    for name, value in INVALID:
        with pytest.raises(SettingsError) as raised, session_factory.begin() as session:
            set_override(session, name, value, "ada", base=settings)
        assert raised.value.setting == name, (name, value)
        assert name in str(raised.value)
    with session_factory() as session:
        assert count_rows(session) == 0 and count_events(session) == 0


def test_restriction_needs_profiles_and_both_may_be_set_at_once(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    with pytest.raises(SettingsError), session_factory.begin() as session:
        set_override(session, "dicom_restrict_calling_ae", True, "ada", base=settings)
    with session_factory.begin() as session:
        changed = set_overrides(
            session,
            settings,
            {"dicom_ae_profiles": [{"ae_title": "CT01"}], "dicom_restrict_calling_ae": True},
            "ada",
        )
    assert changed == ["dicom_ae_profiles", "dicom_restrict_calling_ae"]
    # Taking the profiles away (clearing or emptying) while restricted is refused.
    for attempt in (
        lambda s: clear_override(s, "dicom_ae_profiles", "ada", base=settings),
        lambda s: set_override(s, "dicom_ae_profiles", [], "ada", base=settings),
    ):
        with pytest.raises(SettingsError) as raised, session_factory.begin() as session:
            attempt(session)
        assert raised.value.setting == "dicom_restrict_calling_ae"
    with session_factory() as session:
        assert set(load_overrides(session)) == {"dicom_ae_profiles", "dicom_restrict_calling_ae"}
        assert count_events(session) == 2


def test_a_value_equal_to_the_one_in_force_stores_nothing(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    with session_factory.begin() as session:
        changed = set_overrides(
            session,
            settings,
            {"hl7_modality_map": {"mri": "mr"}, "dicom_max_matches": "0"},
            "ada",
        )
    assert changed == []
    with session_factory() as session:
        assert count_rows(session) == 0 and count_events(session) == 0


def test_clear_override_brings_back_the_base_value(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    base = settings.replace(hl7_missing_start="reject")
    with session_factory.begin() as session:
        set_override(session, "hl7_missing_start", "now", "ada", base=base)
    with session_factory.begin() as session:
        assert clear_override(session, "hl7_missing_start", "bob", base=base)
    with session_factory.begin() as session:
        assert not clear_override(session, "hl7_missing_start", "bob", base=base)
    with session_factory() as session:
        assert load_overrides(session) == {}
        events = events_for_subject(session, "hl7_missing_start")
    assert [(e.username, e.changes[0].before, e.changes[0].after) for e in events] == [
        ("ada", "reject", "now"),
        ("bob", "now", "reject"),
    ]
    assert "reset" in events[1].reason
    with pytest.raises(SettingsError), session_factory.begin() as session:
        clear_override(session, "dicom_port", "bob", base=base)


def test_a_stored_value_that_became_invalid_can_be_repaired(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    with session_factory.begin() as session:
        session.add(SettingOverride(name="dicom_max_matches", value_json="-5", updated_by="x"))
    with session_factory.begin() as session:
        assert set_override(session, "dicom_max_matches", 5, "ada", base=settings)
    with session_factory() as session:
        assert load_overrides(session) == {"dicom_max_matches": "5"}


def test_describe_settings_tells_default_file_and_page_apart(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    with session_factory.begin() as session:
        set_override(session, "hl7_missing_start", "reject", "ada", base=settings)
    with session_factory() as session:
        stored = stored_overrides(session)
        effective = apply_overrides(settings, load_overrides(session))
    rows = {row.name: row for row in describe_settings(settings, effective, stored)}
    assert rows["hl7_missing_start"].source == SOURCE_PAGE
    assert rows["hl7_missing_start"].value == "reject"
    assert rows["hl7_missing_start"].updated_by == "ada" and rows["hl7_missing_start"].editable
    assert rows["hl7_port"].source == SOURCE_FILE and not rows["hl7_port"].editable
    assert rows["dicom_ae_title"].source == SOURCE_DEFAULT
    assert rows["web_secret_key"].value == "(set)"
    assert set(rows) == set(Settings.__dataclass_fields__)


# --------------------------------------------------------------------------- live


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def readers(engine: Engine) -> sessionmaker[Session]:
    """Plain sessions, as LiveSettings should get (a writer would take SQLite's lock)."""
    return make_session_factory(engine)


def test_live_settings_follow_a_change_after_the_refresh_interval(
    session_factory: sessionmaker[Session], readers, settings: Settings
) -> None:
    clock = FakeClock()
    live = LiveSettings(settings, readers, refresh_seconds=2.0, clock=clock)
    first = live.current()
    assert first.dicom_max_matches == 0
    with session_factory.begin() as session:
        set_override(session, "dicom_max_matches", 7, "ada", base=settings)
    clock.now += 1.9
    assert live.current() is first  # still within the interval: no query
    clock.now += 0.2
    changed = live.current()
    assert changed.dicom_max_matches == 7
    clock.now += 5
    assert live.current() is changed  # nothing new: the same object, not rebuilt
    assert live.base is settings
    with session_factory.begin() as session:
        clear_override(session, "dicom_max_matches", "ada", base=settings)
    assert live.refresh().dicom_max_matches == 0  # refresh() does not wait


def test_live_settings_keep_the_last_good_ones_when_a_stored_value_is_bad(
    session_factory: sessionmaker[Session], readers, settings: Settings, caplog
) -> None:
    live = LiveSettings(settings, readers, refresh_seconds=0)
    with session_factory.begin() as session:
        set_override(session, "dicom_max_matches", 3, "ada", base=settings)
    assert live.current().dicom_max_matches == 3
    with session_factory.begin() as session:
        # Written behind the page's back (an older version, a hand edit).
        session.execute(
            update(SettingOverride)
            .where(SettingOverride.name == "dicom_max_matches")
            .values(value_json="-9")
        )
    with caplog.at_level(logging.WARNING, logger="mwl.admin.overrides"):
        for _ in range(3):
            assert live.current().dicom_max_matches == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dicom_max_matches" in warnings[0].getMessage()
    with session_factory.begin() as session:
        set_override(session, "dicom_max_matches", 4, "ada", base=settings)
    assert live.current().dicom_max_matches == 4


def test_live_settings_keep_the_last_good_ones_when_the_database_fails(
    session_factory: sessionmaker[Session], readers, engine: Engine, settings: Settings, caplog
) -> None:
    live = LiveSettings(settings, readers, refresh_seconds=0)
    with session_factory.begin() as session:
        set_override(session, "hl7_missing_start", "reject", "ada", base=settings)
    assert live.current().hl7_missing_start == "reject"
    # A real failure of the database: the table is gone (renamed away, then back).
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE setting_override RENAME TO setting_override_away"))
    try:
        with caplog.at_level(logging.WARNING, logger="mwl.admin.overrides"):
            assert live.current().hl7_missing_start == "reject"
            assert live.current().hl7_missing_start == "reject"
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE setting_override_away RENAME TO setting_override"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot be read" in warnings[0].getMessage()


def test_live_settings_before_any_good_read_are_the_base(tmp_path, settings: Settings) -> None:
    from mwl.store.engine import make_engine

    broken = make_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'mwl.db'}")
    try:
        live = LiveSettings(settings, make_session_factory(broken), refresh_seconds=0)
        assert live.current() is settings
    finally:
        broken.dispose()


def test_live_settings_serve_many_threads(
    session_factory: sessionmaker[Session], readers, settings: Settings
) -> None:
    with session_factory.begin() as session:
        set_override(session, "dicom_max_matches", 11, "ada", base=settings)
    live = LiveSettings(settings, readers, refresh_seconds=0)
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(20):
                seen.append(live.current().dicom_max_matches)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    # The first read waits for the table; later ones never see anything but the value.
    assert seen and set(seen) == {11}
