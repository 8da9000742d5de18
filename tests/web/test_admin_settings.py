"""Admin settings pages: roles, CSRF, storing, validation, reset and the effective settings."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import apply_overrides, load_overrides
from mwl.config import Settings
from mwl.operations.audit import events_for_subject
from mwl.store.models import AuditEvent, SettingOverride, User
from tests.databases import migrated_database_url
from tests.settings_page import add_account, form_values, log_in, submit

PAGES = ["/admin", "/admin/aes", "/admin/hl7"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database per backend for the module."""
    directory = tmp_path_factory.mktemp("admin")
    yield from migrated_database_url(request.param, directory, f"mwl_admin_{os.getpid()}")


@pytest.fixture(autouse=True)
def empty_tables(session_factory: sessionmaker[Session]) -> None:
    """Each test starts without page values or audit events, with one user per role.

    The users stay for the module's tests: hashing their passwords is slow.
    """
    with session_factory.begin() as session:
        for model in (SettingOverride, AuditEvent):
            session.execute(delete(model))
        existing = set(session.scalars(select(User.username)))
    for role in ("admin", "editor", "viewer"):
        if role not in existing:
            add_account(session_factory, role, role)


POSTS = ["/admin/aes", "/admin/hl7", "/admin/settings/hl7_modality_map/reset"]


@pytest.fixture
def admin(client: FlaskClient, session_factory: sessionmaker[Session]) -> FlaskClient:
    """The test client (CSRF off), logged in as an admin."""
    return log_in(client, "admin")


def stored(session_factory: sessionmaker[Session]) -> dict[str, object]:
    """The page values in the database, decoded."""
    with session_factory() as session:
        return {name: json.loads(value) for name, value in load_overrides(session).items()}


def effective(settings: Settings, session_factory: sessionmaker[Session]) -> Settings:
    with session_factory() as session:
        return apply_overrides(settings, load_overrides(session))


def settings_events(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return (
            session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "settings")
            )
            or 0
        )


def text(response) -> str:  # type: ignore[no-untyped-def]
    return response.get_data(as_text=True)


# --------------------------------------------------------------------------- access


def test_anonymous_visitor_is_sent_to_login_and_stores_nothing(
    client: FlaskClient, session_factory
) -> None:
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next="), path
    for path in POSTS:
        response = client.post(path, data={"accepted_senders": "EVIL|*"})
        assert response.status_code == 302, path
    assert stored(session_factory) == {}


def test_viewer_and_editor_are_forbidden(app: Flask, session_factory) -> None:
    for role in ("viewer", "editor"):
        client = log_in(app.test_client(), role)
        for path in PAGES:
            assert client.get(path).status_code == 403, (role, path)
        for path in POSTS:
            assert client.post(path, data={"restrict": "y"}).status_code == 403, (role, path)
        # No link to pages they cannot open.
        assert 'href="/admin"' not in text(client.get("/"))
    assert stored(session_factory) == {}
    assert settings_events(session_factory) == 0


def test_admin_sees_the_pages_and_the_navigation_link(admin: FlaskClient) -> None:
    for path in PAGES:
        assert admin.get(path).status_code == 200, path
    assert 'href="/admin"' in text(admin.get("/"))


def test_posts_without_csrf_token_are_refused(
    csrf_app: Flask, session_factory: sessionmaker[Session]
) -> None:
    client = log_in(csrf_app.test_client(), "admin")
    page = text(client.get("/admin/hl7"))
    values = form_values(page, "/admin/hl7")
    values["modality_map-1-sent"] = ["CAT"]
    values["modality_map-1-modality"] = ["CT"]
    without = {k: v for k, v in values.items() if k != "csrf_token"}
    for path in ("/admin/hl7", "/admin/settings/hl7_modality_map/reset"):
        response = client.post(path, data=without, follow_redirects=False)
        assert response.status_code == 400
        assert "security token" in text(response)
    assert stored(session_factory) == {}
    # With the token the same form is accepted: the token was the only difference.
    assert client.post("/admin/hl7", data=values).status_code == 302
    assert stored(session_factory)["hl7_modality_map"] == {"MRI": "MR", "CAT": "CT"}


def test_reset_form_carries_its_own_csrf_token(
    csrf_app: Flask, session_factory: sessionmaker[Session]
) -> None:
    client = log_in(csrf_app.test_client(), "admin")
    values = form_values(text(client.get("/admin/hl7")), "/admin/hl7")
    values["station_from_orc18"] = ["y"]
    assert client.post("/admin/hl7", data=values).status_code == 302
    path = "/admin/settings/hl7_station_from_orc18/reset"
    reset = form_values(text(client.get("/admin/hl7")), path)
    assert reset["csrf_token"], "the reset button's form has no token"
    assert client.post(path, data=reset).status_code == 302
    assert stored(session_factory) == {}


# --------------------------------------------------------------------------- AEs


def test_adding_a_profile_stores_it_audits_it_and_shows_who(
    admin: FlaskClient, settings: Settings, session_factory
) -> None:
    response = submit(
        admin,
        "/admin/aes",
        {
            "profiles-0-ae_title": "CT01",
            "profiles-0-host": "127.0.0.1",
            "profiles-0-response_charset": "ISO_IR 100",
            "profiles-0-calling_ae_as_station": "y",
            "profiles-0-date_window_days": "3",
            "profiles-0-visible_statuses": ["SCHEDULED", "ARRIVED"],
            "profiles-0-max_matches": "20",
            "restrict": "y",
        },
    )
    assert response.status_code == 302
    profile = effective(settings, session_factory).dicom_ae_profiles[0]
    assert (profile.ae_title, profile.host, profile.response_charset) == (
        "CT01",
        "127.0.0.1",
        "ISO_IR 100",
    )
    assert profile.calling_ae_as_station and profile.date_window_days == 3
    assert profile.visible_statuses == ("SCHEDULED", "ARRIVED") and profile.max_matches == 20
    assert effective(settings, session_factory).dicom_restrict_calling_ae is True
    # Unchanged settings of the page are not turned into page values.
    assert set(stored(session_factory)) == {"dicom_ae_profiles", "dicom_restrict_calling_ae"}
    with session_factory() as session:
        (event,) = events_for_subject(session, "dicom_ae_profiles")
    assert event.username == "admin" and event.action == "settings"
    assert event.changes[0].before == [] and event.changes[0].after[0]["ae_title"] == "CT01"

    page = text(admin.get("/admin/aes"))
    assert "Saved: dicom_ae_profiles, dicom_restrict_calling_ae." in page
    assert 'value="CT01"' in page
    overview = text(admin.get("/admin"))
    row = re.search(r"<code>dicom_ae_profiles</code>.*?</tr>", overview, re.S)
    assert row and "Settings page" in row.group(0) and "by admin" in row.group(0)
    assert "CT01" in row.group(0)


def test_editing_and_removing_a_profile(admin: FlaskClient, settings, session_factory) -> None:
    submit(admin, "/admin/aes", {"profiles-0-ae_title": "CT01", "profiles-0-max_matches": "5"})
    submit(admin, "/admin/aes", {"profiles-0-max_matches": "7", "profiles-1-ae_title": "MR01"})
    profiles = effective(settings, session_factory).dicom_ae_profiles
    assert [(p.ae_title, p.max_matches) for p in profiles] == [("CT01", 7), ("MR01", 0)]
    # Removing asks first: the confirmation page names the profile and changes nothing.
    asked = submit(admin, "/admin/aes", {"profiles-0-remove": "y"})
    assert asked.status_code == 200 and "Remove these rows?" in text(asked)
    assert "Profile of CT01" in text(asked)
    assert len(effective(settings, session_factory).dicom_ae_profiles) == 2
    submit(admin, "/admin/aes", {"profiles-0-remove": "y", "confirm": "yes"})
    profiles = effective(settings, session_factory).dicom_ae_profiles
    assert [p.ae_title for p in profiles] == ["MR01"]
    with session_factory() as session:
        assert len(events_for_subject(session, "dicom_ae_profiles")) == 3


def test_saving_the_form_keeps_profile_keys_it_does_not_show(
    admin: FlaskClient, settings, session_factory
) -> None:
    from mwl.admin.overrides import set_overrides

    hidden = {"match_keys": ["PregnancyStatus"], "max_length": {"PatientName": 32}}
    with session_factory.begin() as session:
        set_overrides(
            session, settings, {"dicom_ae_profiles": [{"ae_title": "CT01", **hidden}]}, "admin"
        )
    submit(admin, "/admin/aes", {"profiles-0-ae_title": "CT01", "profiles-0-max_matches": "5"})
    (profile,) = effective(settings, session_factory).dicom_ae_profiles
    assert profile.max_matches == 5
    assert profile.match_keys == ("PregnancyStatus",)
    assert profile.max_length == (("PatientName", 32),)


# (changes, message, field marked): WTForms and row checks, before the core is asked.
BAD_AE_FIELDS = [
    (
        {"profiles-0-ae_title": "A" * 17},
        "Field cannot be longer than 16",
        "profiles-0-ae_title",
    ),
    ({"profiles-0-host": "10.0.0.9"}, "Enter the calling AE title", "profiles-0-ae_title"),
    (
        {"profiles-0-ae_title": "CT01", "profiles-0-date_window_days": "-1"},
        "between 0 and 366",
        "profiles-0-date_window_days",
    ),
    (
        {"profiles-0-ae_title": "CT01", "profiles-0-max_matches": "many"},
        "Not a valid integer",
        "profiles-0-max_matches",
    ),
    ({"max_matches": "-5"}, "at least 0", "max_matches"),
    (
        {"profiles-0-ae_title": "CT01", "profiles-0-visible_statuses": ["LOST"]},
        "not a valid choice",
        "profiles-0-visible_statuses",
    ),
    ({"response_charset": "KLINGON"}, "Not a valid choice", "response_charset"),
]


def test_field_and_row_problems_show_together(admin: FlaskClient, session_factory) -> None:
    # A field WTForms refuses and a row missing its AE title: both marked in one answer.
    changes = {"max_matches": "-5", "profiles-0-host": "10.0.0.9"}
    page = text(submit(admin, "/admin/aes", changes))
    assert "at least 0" in page and "Enter the calling AE title" in page
    assert 'id="max_matches-error"' in page and 'id="profiles-0-ae_title-error"' in page
    assert stored(session_factory) == {}


def test_bad_fields_are_marked_and_nothing_is_stored(admin: FlaskClient, session_factory) -> None:
    for changes, message, field in BAD_AE_FIELDS:
        response = submit(admin, "/admin/aes", changes)
        assert response.status_code == 400, changes
        page = text(response)
        assert "Some values are not valid" in page
        assert message in page, changes
        # The error is tied to its field for screen readers.
        error_id = f"{field}-error"
        assert f'id="{error_id}"' in page, changes
        assert re.search(rf'aria-describedby="[^"]*{re.escape(error_id)}', page), changes
        # What was typed is kept for correcting it.
        for name, value in changes.items():
            if isinstance(value, str) and not name.endswith("response_charset"):
                assert f'value="{value}"' in page, changes
    assert stored(session_factory) == {}
    assert settings_events(session_factory) == 0


# (changes, message): whole-settings checks of the core, named by setting.
INVALID_AE_SETTINGS = [
    ({"restrict": "y"}, "dicom_restrict_calling_ae: needs dicom_ae_profiles"),
    (
        {"profiles-0-ae_title": "CT01", "profiles-0-host": "ct01.example.org"},
        "dicom_ae_profiles: &#39;ct01.example.org&#39; (CT01) is not an IP address",
    ),
    (
        {"profiles-0-ae_title": "CT\\01"},
        "dicom_ae_profiles: &#39;CT\\\\01&#39; is not an AE title",
    ),
]


def test_invalid_settings_get_a_clear_message_and_store_nothing(
    admin: FlaskClient, session_factory
) -> None:
    for changes, message in INVALID_AE_SETTINGS:
        response = submit(admin, "/admin/aes", changes)
        assert response.status_code == 400, changes
        assert message in text(response), changes
    assert stored(session_factory) == {}
    assert settings_events(session_factory) == 0


def test_restriction_and_first_profile_can_be_set_together_then_not_emptied(
    admin: FlaskClient, session_factory
) -> None:
    assert (
        submit(admin, "/admin/aes", {"restrict": "y", "profiles-0-ae_title": "CT01"}).status_code
        == 302
    )
    before = stored(session_factory)
    response = submit(admin, "/admin/aes", {"profiles-0-remove": "y", "confirm": "yes"})
    assert response.status_code == 400
    assert "needs dicom_ae_profiles" in text(response)
    assert stored(session_factory) == before


def test_change_by_someone_else_meanwhile_is_not_overwritten(
    admin: FlaskClient, session_factory
) -> None:
    page = text(admin.get("/admin/aes"))
    stale = form_values(page, "/admin/aes")
    submit(admin, "/admin/aes", {"max_matches": "50"})  # the other admin
    stale["profiles-0-ae_title"] = ["CT01"]
    response = admin.post("/admin/aes", data=stale)
    assert response.status_code == 409
    assert "Someone changed these settings" in text(response)
    assert stored(session_factory) == {"dicom_max_matches": 50}


def test_saving_an_unchanged_page_stores_nothing(admin: FlaskClient, session_factory) -> None:
    for path in ("/admin/aes", "/admin/hl7"):
        response = submit(admin, path, {})
        assert response.status_code == 302
        assert "Nothing changed." in text(admin.get(path))
    assert stored(session_factory) == {}
    assert settings_events(session_factory) == 0


# --------------------------------------------------------------------------- HL7


def test_hl7_rules_are_stored_from_the_structured_form(
    admin: FlaskClient, settings, session_factory
) -> None:
    response = submit(
        admin,
        "/admin/hl7",
        {
            "modality_map-1-sent": "cat",
            "modality_map-1-modality": "ct",
            "station_rules-0-modality": "MR",
            "station_rules-0-location": "WARD3",
            "station_rules-0-station_ae_title": "MR_WARD3",
            "station_rules-0-station_name": "MR ward 3",
            "order_status-0-order_control": "xo",
            "order_status-0-status": "SCHEDULED",
            "order_status-1-order_control": "SC",
            "order_status-1-order_status": "IP",
            "order_status-1-status": "-",
            "accepted_senders": "RIS|HOSPITAL\r\n\r\nPACS*|*\r\n",
            "protocol_code_component": "1",
            "missing_start": "reject",
            "station_from_orc18": "y",
        },
    )
    assert response.status_code == 302
    now = effective(settings, session_factory)
    assert now.hl7_modality_map == (("MRI", "MR"), ("CAT", "CT"))
    (rule,) = now.hl7_station_rules
    assert (rule.modality, rule.location, rule.station_ae_title, rule.station_name) == (
        "MR",
        "WARD3",
        "MR_WARD3",
        "MR ward 3",
    )
    assert now.hl7_order_status == (("XO", "", "SCHEDULED"), ("SC", "IP", ""))
    assert now.hl7_accepted_senders == ("RIS|HOSPITAL", "PACS*|*")
    assert now.hl7_protocol_code_component == 1
    assert now.hl7_missing_start == "reject"
    assert now.hl7_station_from_orc18 is True
    # The page shows them back as they were stored (the rows plus one empty row each).
    page = text(admin.get("/admin/hl7"))
    values = form_values(page, "/admin/hl7")
    assert values["modality_map-1-sent"] == ["CAT"] and values["modality_map-2-sent"] == [""]
    assert values["order_status-1-status"] == ["-"]
    assert values["accepted_senders"] == ["RIS|HOSPITAL\nPACS*|*"]


def test_removing_the_last_modality_row_empties_the_map(
    admin: FlaskClient, settings, session_factory
) -> None:
    removal = {"modality_map-0-remove": "y", "confirm": "yes"}
    assert submit(admin, "/admin/hl7", removal).status_code == 302
    assert effective(settings, session_factory).hl7_modality_map == ()
    assert stored(session_factory) == {"hl7_modality_map": {}}


# (changes, message): row checks, WTForms and the core's, on the HL7 page.
BAD_HL7_RULES = [
    (
        {"modality_map-1-sent": "CAT", "modality_map-1-modality": "C T"},
        "hl7_modality_map: not valid: &#39;C T&#39; (for &#39;CAT&#39;) is not a DICOM modality",
    ),
    ({"modality_map-1-sent": "CAT"}, "Enter the DICOM modality"),
    ({"modality_map-1-modality": "CT"}, "Enter the value sent"),
    ({"accepted_senders": "RIS|HOSP|X"}, "hl7_accepted_senders: not valid"),
    ({"station_rules-0-modality": "CT"}, "Enter the station AE title"),
    (
        {"station_rules-0-station_ae_title": "WAY_TOO_LONG_AE_TITLE"},
        "Field cannot be longer than 16",
    ),
    ({"order_status-0-order_control": "NW"}, "Choose the step status"),
    (
        {"order_status-0-order_control": "NW", "order_status-0-status": "LOST"},
        "Not a valid choice",
    ),
    ({"protocol_code_component": "2"}, "Not a valid choice"),
    ({"missing_start": "later"}, "Not a valid choice"),
]


def test_bad_hl7_rules_get_a_message_and_store_nothing(admin: FlaskClient, session_factory) -> None:
    for changes, message in BAD_HL7_RULES:
        response = submit(admin, "/admin/hl7", changes)
        assert response.status_code == 400, changes
        assert message in text(response), changes
    assert stored(session_factory) == {}
    assert settings_events(session_factory) == 0


# --------------------------------------------------------------------------- reset


def test_reset_brings_back_the_file_value(admin: FlaskClient, settings, session_factory) -> None:
    submit(admin, "/admin/hl7", {"missing_start": "reject"})
    page = text(admin.get("/admin/hl7"))
    assert 'form="reset-hl7_missing_start"' in page
    assert 'form="reset-hl7_modality_map"' not in page  # only page values can be reset
    response = admin.post("/admin/settings/hl7_missing_start/reset")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/hl7"
    assert "hl7_missing_start uses the file or environment value again" in text(
        admin.get("/admin/hl7")
    )
    assert effective(settings, session_factory).hl7_missing_start == "now"
    with session_factory() as session:
        first, second = events_for_subject(session, "hl7_missing_start")
    assert (second.changes[0].before, second.changes[0].after) == ("reject", "now")
    # Resetting again changes nothing and says so.
    admin.post("/admin/settings/hl7_missing_start/reset")
    assert "had no value from this page" in text(admin.get("/admin/hl7"))
    assert settings_events(session_factory) == 2


def test_reset_of_a_file_only_setting_is_not_found(admin: FlaskClient, session_factory) -> None:
    for name in ("dicom_port", "database_url", "no_such_setting"):
        assert admin.post(f"/admin/settings/{name}/reset").status_code == 404
    assert settings_events(session_factory) == 0


def test_reset_that_would_leave_invalid_settings_is_refused(
    admin: FlaskClient, session_factory
) -> None:
    submit(admin, "/admin/aes", {"restrict": "y", "profiles-0-ae_title": "CT01"})
    before = stored(session_factory)
    response = admin.post("/admin/settings/dicom_ae_profiles/reset")
    assert response.status_code == 400
    assert "dicom_restrict_calling_ae: needs dicom_ae_profiles" in text(response)
    assert stored(session_factory) == before


# --------------------------------------------------------------------------- overview


def test_overview_lists_every_setting_with_its_source_and_hides_secrets(
    admin: FlaskClient, session_factory
) -> None:
    submit(admin, "/admin/hl7", {"missing_start": "reject"})
    page = text(admin.get("/admin"))
    for name in ("hl7_port", "dicom_ae_title", "database_url", "retention_batch_size"):
        assert f"<code>{name}</code>" in page
    assert "test-secret-key" not in page and "(set)" in page

    def source(name: str) -> str:
        row = re.search(rf"<code>{name}</code>.*?</tr>", page, re.S)
        assert row, name
        return row.group(0)

    assert "Settings page" in source("hl7_missing_start") and "reject" in source(
        "hl7_missing_start"
    )
    assert "File or environment" in source("hl7_port")  # the test settings set port 0
    assert "Default" in source("dicom_ae_title")
    # Editable settings link to their page; file-only ones are in their own table.
    assert '<a href="/admin/hl7"><code>hl7_missing_start</code></a>' in page
    assert page.index("<code>hl7_port</code>") > page.index("Set in the file or environment only")


def test_overview_hides_the_database_password(
    session_factory: sessionmaker[Session], reader_factory
) -> None:
    from web import create_app

    secret = Settings(database_url="postgresql://mwl:hunter2@db.example/mwl", web_secret_key="k")
    app = create_app(secret, reader_factory, config={"TESTING": True, "WTF_CSRF_ENABLED": False})
    client = log_in(app.test_client(), "admin")
    page = text(client.get("/admin"))
    assert "hunter2" not in page and "postgresql://mwl:***@db.example/mwl" in page


def test_overview_says_when_a_stored_value_is_not_valid(
    admin: FlaskClient, session_factory
) -> None:
    with session_factory.begin() as session:
        session.add(SettingOverride(name="dicom_max_matches", value_json="-3", updated_by="x"))
    page = admin.get("/admin")
    assert page.status_code == 200
    assert "is not valid" in text(page) and "dicom_max_matches" in text(page)
    # The page to repair it still opens, with a reset button for the bad value.
    aes = text(admin.get("/admin/aes"))
    assert 'form="reset-dicom_max_matches"' in aes
    assert admin.post("/admin/settings/dicom_max_matches/reset").status_code == 302
    assert stored(session_factory) == {}


def test_watchdog_thresholds_are_stored_live_and_checked(
    admin: FlaskClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    page = admin.get("/alerts/settings")
    assert page.status_code == 200 and "Hours watched" in text(page)
    saved = submit(
        admin,
        "/alerts/settings",
        {"hours-5": "08-12", "hl7_silent_minutes": "30", "missing_station": None},
    )
    assert saved.status_code == 302
    assert stored(session_factory) == {
        "watchdog_hours": ["07-19", "07-19", "07-19", "07-19", "07-19", "08-12", ""],
        "watchdog_hl7_silent_minutes": 30.0,
        "watchdog_missing_station": False,
    }
    live = effective(settings, session_factory)
    assert live.watchdog_hours[5] == "08-12" and live.watchdog_hl7_silent_minutes == 30
    # A window the setting refuses comes back with the reason, and nothing more is stored.
    refused = submit(admin, "/alerts/settings", {"hours-0": "19-07"})
    assert refused.status_code == 400 and "19-07" in text(refused)
    assert stored(session_factory)["watchdog_hours"][0] == "07-19"  # type: ignore[index]
    # The overview links the watchdog's settings to their page.
    assert 'href="/alerts/settings"' in text(admin.get("/admin"))


def test_the_day_list_and_the_alerts_page_show_firing_alerts(
    admin: FlaskClient, session_factory: sessionmaker[Session]
) -> None:
    from mwl.store.models import WatchdogAlert, utcnow

    with session_factory.begin() as session:
        session.execute(delete(WatchdogAlert))
        session.add(
            WatchdogAlert(
                key="scanner_failing:CT01",
                kind="scanner_failing",
                subject="CT01",
                summary="the last 3 worklist queries of CT01 failed",
                details=json.dumps({"count": 3, "status": "0xA900"}),
                state="firing",
                fired_at=utcnow(),
                notified="",
            )
        )
    day = text(admin.get("/", follow_redirects=True))
    assert "The last 3 worklist queries of CT01 failed (status 0xA900)." in day
    assert 'data-alert="scanner_failing:CT01"' in day
    admin.post("/language", data={"lang": "de", "next": "/alerts"})
    german = text(admin.get("/alerts"))
    assert "Die letzten 3 Worklist-Abfragen von CT01 sind fehlgeschlagen" in german
    with session_factory.begin() as session:
        session.execute(delete(WatchdogAlert))
    assert "data-alert" not in text(admin.get("/", follow_redirects=True))
