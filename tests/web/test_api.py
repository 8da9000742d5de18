"""The JSON API under /api/v1: tokens, roles, every route, and bad input storing nothing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from mwl.admin.tokens import create_token, list_tokens, revoke_token
from mwl.admin.users import add_user
from mwl.operations.audit import events_for_step, recent_events
from mwl.store.models import (
    AuditEvent,
    Hl7Message,
    QueryLogEntry,
    ScheduledProcedureStep,
    User,
    utcnow,
)
from tests.web.conftest import PASSWORD

DAY = dt.date(2031, 3, 4)
START = dt.datetime(2031, 3, 4, 9, 30)
RAW = b"MSH|^~\\&|RIS|HOSP|MWL|RAD|20310304090000||ORM^O01|CTRL-1|P|2.5.1\rPID|||P1||Doe^Jane\r"
ACK = b"MSH|^~\\&|MWL|RAD|RIS|HOSP|20310304090001||ACK^O01|A-1|P|2.5.1\rMSA|AA|CTRL-1\r"


@pytest.fixture
def tokens(session_factory) -> dict[str, str]:
    """A user and an API token per role; returns role -> token."""
    found = {}
    with session_factory.begin() as session:
        for role in ("viewer", "editor", "admin"):
            # No password needed (and none hashed, which is slow on purpose): tokens only.
            session.add(User(username=f"api-{role}", password_hash="-", role=role))
            session.flush()
            found[role] = create_token(session, f"api-{role}", "tests")
    return found


@pytest.fixture
def api(csrf_app: Flask) -> FlaskClient:
    """A client of the app as in production (CSRF protection on), with no cookie."""
    return csrf_app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def step_key(session_factory, accession: str) -> int:
    with session_factory() as session:
        return session.scalars(
            select(ScheduledProcedureStep.id).where(
                ScheduledProcedureStep.scheduled_procedure_step_id == f"S-{accession}"
            )
        ).one()


def counts(session_factory) -> tuple[int, int]:
    """(steps, audit events): what a refused request must leave as it was."""
    with session_factory() as session:
        steps = session.scalar(select(func.count()).select_from(ScheduledProcedureStep))
        events = session.scalar(select(func.count()).select_from(AuditEvent))
    return steps or 0, events or 0


def add_message(session_factory, **values) -> int:
    defaults = dict(
        received_at=utcnow(),
        peer_address="10.1.2.3",
        sending_application="RIS",
        sending_facility="HOSP",
        message_control_id="CTRL-1",
        message_type="ORM^O01",
        raw=RAW,
        outcome="AA",
        ack=ACK,
        processed_at=utcnow(),
    )
    with session_factory.begin() as session:
        row = Hl7Message(**{**defaults, **values})
        session.add(row)
        session.flush()
        return row.id


# Every route of the API: method, path, body, role needed.
ROUTES = [
    ("GET", "/api/v1/items", None, "viewer"),
    ("GET", "/api/v1/items/{key}", None, "viewer"),
    (
        "POST",
        "/api/v1/items",
        {"modality": "CT", "patient_id": "P9", "patient_name": "Roe"},
        "editor",
    ),
    ("PATCH", "/api/v1/items/{key}", {"patient_sex": "M", "reason": "typo"}, "editor"),
    ("POST", "/api/v1/items/{key}/cancel", {"reason": "no show"}, "editor"),
    ("POST", "/api/v1/items/{key}/restore", None, "editor"),
    ("GET", "/api/v1/messages", None, "viewer"),
    ("GET", "/api/v1/messages/{message}", None, "viewer"),
    ("GET", "/api/v1/aes", None, "viewer"),
]


def test_the_route_table_covers_every_api_route(csrf_app):
    served = {
        (method, rule.rule.replace("<int:key>", "{key}"))
        for rule in csrf_app.url_map.iter_rules()
        if rule.endpoint.startswith("api.") and rule.endpoint != "api.openapi_document"
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    listed = {(method, path.replace("{message}", "{key}")) for method, path, _, _ in ROUTES}
    assert served == listed


def _call(client: FlaskClient, method: str, path: str, body, headers):
    return client.open(path, method=method, json=body, headers=headers)


def test_every_route_needs_a_valid_bearer_token(api, tokens, session_factory, add_order, csrf_app):
    add_order("ACC1", START)
    key = step_key(session_factory, "ACC1")
    message = add_message(session_factory)
    # A logged-in browser session (admin) must not count: only tokens do.
    with session_factory.begin() as session:
        add_user(session, "boss", PASSWORD, "admin")
    browser = csrf_app.test_client()
    page = browser.get("/login").get_data(as_text=True)
    csrf = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    login = browser.post(
        "/login", data={"username": "boss", "password": PASSWORD, "csrf_token": csrf}
    )
    assert login.status_code == 302
    with session_factory.begin() as session:
        (revoked,) = [t for t in list_tokens(session, "api-admin")]
        revoke_token(session, revoked.key)
    before = counts(session_factory)

    for method, template, body, _ in ROUTES:
        path = template.format(key=key, message=message)
        cases = [
            (api, {}, 'Bearer realm="mwl"'),
            (api, {"Authorization": "Basic YWxpY2U6cHc="}, 'Bearer realm="mwl"'),
            (api, bearer("mwl_not-a-token"), 'Bearer realm="mwl", error="invalid_token"'),
            (api, bearer(tokens["admin"]), 'Bearer realm="mwl", error="invalid_token"'),  # revoked
            (browser, {}, 'Bearer realm="mwl"'),
        ]
        for client, headers, challenge in cases:
            response = _call(client, method, path, body, headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.is_json and "error" in response.json
            assert response.headers["WWW-Authenticate"] == challenge
    assert counts(session_factory) == before


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_each_role_may_do_what_it_may_and_nothing_more(
    api, tokens, session_factory, add_order, role
):
    add_order("ACC1", START)
    key = step_key(session_factory, "ACC1")
    message = add_message(session_factory)
    rank = ["viewer", "editor", "admin"]
    for method, template, body, needed in ROUTES:
        path = template.format(key=key, message=message)
        before = counts(session_factory)
        response = _call(api, method, path, body, bearer(tokens[role]))
        assert response.is_json, (method, path)
        if rank.index(role) >= rank.index(needed):
            assert response.status_code in (200, 201), (method, path, response.json)
        else:
            assert response.status_code == 403, (method, path)
            assert "editor" in response.json["error"]
            assert counts(session_factory) == before
    with session_factory() as session:
        actions = [(e.username, e.action) for e in reversed(recent_events(session))]
    if role == "viewer":
        assert actions == []
    else:
        user = f"api-{role}"
        assert actions == [(user, "create"), (user, "edit"), (user, "cancel"), (user, "restore")]


def test_list_items_of_a_day_with_filters(api, tokens, session_factory, add_order):
    add_order("ACC1", START, station="CT01", patient_id="P1", patient_name="Müller^Hans")
    add_order("ACC2", START + dt.timedelta(hours=1), modality="MR", station="MR01", patient_id="P2")
    add_order("ACC3", START - dt.timedelta(hours=1), station="CT02", patient_id="P3")
    add_order("ACC4", START + dt.timedelta(days=1), station="CT01", patient_id="P4")
    cancel = api.post(
        f"/api/v1/items/{step_key(session_factory, 'ACC3')}/cancel",
        headers=bearer(tokens["editor"]),
    )
    assert cancel.status_code == 200
    headers = bearer(tokens["viewer"])

    def accessions(query: str) -> list[str]:
        response = api.get(f"/api/v1/items?date={DAY.isoformat()}{query}", headers=headers)
        assert response.status_code == 200, response.json
        assert response.json["date"] == DAY.isoformat()
        return [item["accession_number"] for item in response.json["items"]]

    assert accessions("") == ["ACC3", "ACC1", "ACC2"]  # by start
    assert accessions("&modality=CT") == ["ACC3", "ACC1"]
    assert accessions("&station=MR01") == ["ACC2"]
    assert accessions("&status=CANCELED") == ["ACC3"]
    assert accessions("&status=CANCELED&status=SCHEDULED") == ["ACC3", "ACC1", "ACC2"]
    assert accessions("&q=muller") == ["ACC1"]
    assert accessions("&q=ACC2") == ["ACC2"]
    assert accessions("&modality=CT&status=SCHEDULED") == ["ACC1"]
    today = api.get("/api/v1/items", headers=headers).json
    assert today["date"] == dt.date.today().isoformat() and today["items"] == []


BAD_ITEM_QUERIES = [
    ("date=2031-02-30", "date"),
    ("date=04.03.2031", "date"),
    ("date=", "date"),
    ("date=3031-01-01", "date"),
    ("status=GONE", "status"),
    ("modality=CT%00", "modality"),
    ("q=" + "x" * 201, "q"),
]


def test_list_items_refuses_bad_parameters(api, tokens):
    for query, field in BAD_ITEM_QUERIES:
        response = api.get(f"/api/v1/items?{query}", headers=bearer(tokens["viewer"]))
        assert response.status_code == 400, query
        assert set(response.json["errors"]) == {field}, query


def test_get_item_shows_every_field_in_json(api, tokens, session_factory, add_order):
    add_order("ACC1", START, birth_date="19800214", patient_name="Doe^Jane")
    key = step_key(session_factory, "ACC1")
    response = api.get(f"/api/v1/items/{key}", headers=bearer(tokens["viewer"]))
    assert response.status_code == 200
    item = response.json
    assert item["key"] == key
    assert item["status"] == item["scheduled_procedure_step_status"] == "SCHEDULED"
    assert item["accession_number"] == "ACC1"
    assert item["scheduled_procedure_step_id"] == "S-ACC1"
    assert item["patient_name"] == "Doe^Jane"
    assert item["patient_birth_date"] == "1980-02-14"
    assert item["start"] == "2031-03-04T09:30:00"
    assert item["modality"] == "CT" and item["scheduled_station_ae_title"] == "CT01"
    assert item["scheduled_protocol_codes"] == [] and item["requested_procedure_code"] is None
    assert "step_key" not in item
    for missing in (key + 1000, 2**31, 2**70):
        response = api.get(f"/api/v1/items/{missing}", headers=bearer(tokens["viewer"]))
        assert response.status_code == 404 and response.is_json


def test_create_item_stores_the_order_and_audits_the_token_user(api, tokens, session_factory):
    body = {
        "modality": "ct",
        "scheduled_station_ae_title": "CT01",
        "start": "2031-03-04T10:15:00",
        "requested_procedure_description": "CT chest",
        "patient_id": "P77",
        "patient_name": "Roe^Rita",
        "patient_birth_date": "1975-12-01",
        "patient_sex": "F",
        "priority": "HIGH",
    }
    response = api.post("/api/v1/items", json=body, headers=bearer(tokens["editor"]))
    assert response.status_code == 201, response.json
    item = response.json
    assert response.headers["Location"] == f"/api/v1/items/{item['key']}"
    assert item["modality"] == "CT"
    assert item["start"] == "2031-03-04T10:15:00"
    assert item["patient_birth_date"] == "1975-12-01"
    assert item["requested_procedure_priority"] == "HIGH"
    assert item["accession_number"] and item["study_instance_uid"].startswith("2.25.")

    again = api.get(response.headers["Location"], headers=bearer(tokens["viewer"]))
    assert again.json == item
    with session_factory() as session:
        (event,) = events_for_step(session, item["key"])
    assert (event.username, event.action) == ("api-editor", "create")


def test_create_item_converts_a_start_with_an_offset_to_local_time(api, tokens):
    start = dt.datetime(2031, 3, 4, 10, 15, tzinfo=dt.UTC)
    body = {"modality": "CT", "patient_id": "P1", "patient_name": "X", "start": "2031-03-04T10:15Z"}
    response = api.post("/api/v1/items", json=body, headers=bearer(tokens["editor"]))
    assert response.status_code == 201
    local = start.astimezone().replace(tzinfo=None)
    assert response.json["start"] == local.isoformat(timespec="seconds")


BAD_ORDERS = [
    ({}, {"modality"}),
    ({"modality": "CT", "patient_id": "P1"}, {"patient_name"}),  # unknown patient
    ({"modality": "CT", "unidentified": False}, {"patient_id"}),
    ({"modality": "CT", "unidentified": "yes", "colour": "red"}, {"unidentified", "colour"}),
    (
        {"modality": 5, "patient_name": ["Doe"], "start": None},
        {"modality", "patient_name", "start"},
    ),
    (
        {"modality": "C-T", "priority": "URGENT", "patient_sex": "X"},
        {"modality", "priority", "patient_sex"},
    ),
    (
        {"modality": "CT", "unidentified": True, "start": "2031-02-30T10:00"},
        {"start"},
    ),
    (
        {"modality": "CT", "unidentified": True, "start": "2031-03-04 10:00"},
        {"start"},
    ),
    (
        {"modality": "CT", "unidentified": True, "patient_birth_date": "19800214"},
        {"patient_birth_date"},
    ),
    (
        {"modality": "CT", "unidentified": True, "patient_birth_date": "2999-01-01"},
        {"patient_birth_date"},  # in the future: the core's rule
    ),
    (
        {"modality": "CT", "unidentified": True, "requested_procedure_description": "a\x00b"},
        {"requested_procedure_description"},
    ),
    (
        {"modality": "CT", "unidentified": True, "scheduled_station_ae_title": "X" * 17},
        {"scheduled_station_ae_title"},
    ),
    (
        {"modality": "CT", "unidentified": True, "patient_name": "A=B=C=D"},
        {"patient_name"},
    ),
    (
        {"modality": "CT", "unidentified": True, "scheduled_station_ae_title": "CT\u00e901"},
        {"scheduled_station_ae_title"},
    ),
]


def test_create_item_refuses_bad_input_and_stores_nothing(api, tokens, session_factory):
    for body, fields in BAD_ORDERS:
        response = api.post("/api/v1/items", json=body, headers=bearer(tokens["editor"]))
        assert response.status_code == 400, (body, response.json)
        assert response.json["error"] == "The request was not accepted; nothing was stored."
        assert set(response.json["errors"]) == fields, body
        assert all(isinstance(text, str) and text for text in response.json["errors"].values())
    assert counts(session_factory) == (0, 0)


def test_bodies_that_are_not_json_objects_are_refused(api, tokens, session_factory):
    headers = bearer(tokens["editor"])
    cases = [
        ("not json", "text/plain", 415, None),
        ('{"modality": "CT"}', "application/x-www-form-urlencoded", 415, None),
        ("", None, 415, None),
        ("{", "application/json", 400, "body"),
        ('["modality"]', "application/json", 400, "body"),
        ("null", "application/json", 400, "body"),
        ("[" * 30000 + "]" * 30000, "application/json", 400, "body"),  # deeper than Python parses
        (b"\xff\xfe{", "application/json", 400, "body"),
        ('{"modality": "' + "C" * 70000 + '"}', "application/json", 413, None),
    ]
    for data, content_type, status, field in cases:
        response = api.post("/api/v1/items", data=data, content_type=content_type, headers=headers)
        assert response.status_code == status, (data[:20], response.json)
        assert response.is_json
        if field:
            assert set(response.json["errors"]) == {field}
    assert counts(session_factory) == (0, 0)


def test_update_item_changes_only_what_is_sent(api, tokens, session_factory, add_order):
    add_order("ACC1", START, patient_name="Doe^Jane", sex="F")
    key = step_key(session_factory, "ACC1")
    headers = bearer(tokens["editor"])
    response = api.patch(
        f"/api/v1/items/{key}",
        json={"patient_name": "Doe^Janet", "start": "2031-03-04T11:00", "reason": "called"},
        headers=headers,
    )
    assert response.status_code == 200, response.json
    assert response.json["patient_name"] == "Doe^Janet"
    assert response.json["start"] == "2031-03-04T11:00:00"
    assert response.json["patient_sex"] == "F" and response.json["modality"] == "CT"
    with session_factory() as session:
        (event,) = events_for_step(session, key)
    assert (event.username, event.action, event.reason) == ("api-editor", "edit", "called")
    assert {c.field for c in event.changes} == {"patient_name", "start"}

    unchanged = api.patch(f"/api/v1/items/{key}", json={}, headers=headers)
    assert unchanged.status_code == 200 and unchanged.json == response.json
    assert counts(session_factory) == (1, 1)


def test_update_item_refuses_bad_input_and_changes_nothing(api, tokens, session_factory, add_order):
    add_order("ACC1", START)
    key = step_key(session_factory, "ACC1")
    headers = bearer(tokens["editor"])
    before = api.get(f"/api/v1/items/{key}", headers=headers).json
    bad = [
        ({"patient_sex": "Q", "modality": "CT\\MR"}, {"patient_sex", "modality"}),
        ({"patient_id": "OTHER"}, {"patient_id"}),  # a RIS patient ID is not changed here
        ({"reason": "x" * 256}, {"reason"}),
        ({"accession_number": "A2"}, {"accession_number"}),
        ({"patient_name": "Doe^Jane", "patient_birth_date": "2031-13-01"}, {"patient_birth_date"}),
    ]
    for body, fields in bad:
        response = api.patch(f"/api/v1/items/{key}", json=body, headers=headers)
        assert response.status_code == 400, body
        assert set(response.json["errors"]) == fields, body
    missing = api.patch("/api/v1/items/999999", json={"patient_sex": "M"}, headers=headers)
    assert missing.status_code == 404 and missing.is_json
    assert api.get(f"/api/v1/items/{key}", headers=headers).json == before
    assert counts(session_factory) == (1, 0)


def test_cancel_and_restore(api, tokens, session_factory, add_order):
    add_order("ACC1", START)
    key = step_key(session_factory, "ACC1")
    headers = bearer(tokens["editor"])
    canceled = api.post(f"/api/v1/items/{key}/cancel", json={"reason": "no show"}, headers=headers)
    assert canceled.status_code == 200 and canceled.json["status"] == "CANCELED"
    again = api.post(f"/api/v1/items/{key}/cancel", headers=headers)
    assert again.status_code == 409
    assert set(again.json["errors"]) == {"scheduled_procedure_step_status"}

    refused = [
        (api.post(f"/api/v1/items/{key}/restore", data="why", headers=headers), 415),
        (api.post(f"/api/v1/items/{key}/restore", json={"reason": "a\nb"}, headers=headers), 400),
        (api.post(f"/api/v1/items/{key}/restore", json={"why": "x"}, headers=headers), 400),
        (api.post("/api/v1/items/999999/restore", headers=headers), 404),
    ]
    for response, status in refused:
        assert response.status_code == status and response.is_json
    assert api.get(f"/api/v1/items/{key}", headers=headers).json["status"] == "CANCELED"

    restored = api.post(f"/api/v1/items/{key}/restore", headers=headers)
    assert restored.status_code == 200 and restored.json["status"] == "SCHEDULED"
    assert api.post(f"/api/v1/items/{key}/restore", headers=headers).status_code == 409
    with session_factory() as session:
        trail = [(e.action, e.reason) for e in events_for_step(session, key)]
    assert trail == [("cancel", "no show"), ("restore", "")]


def test_messages_list_filters_and_pages(api, tokens, session_factory):
    now = utcnow().replace(microsecond=0)
    first = add_message(session_factory, received_at=now - dt.timedelta(days=2))
    second = add_message(
        session_factory,
        received_at=now - dt.timedelta(hours=1),
        message_type="ADT^A08",
        message_control_id="CTRL-2",
        outcome="AR",
        error="unknown patient",
        ack=None,
    )
    third = add_message(session_factory, received_at=now, message_control_id="CTRL-3")
    headers = bearer(tokens["viewer"])

    def keys(query: str = "") -> list[int]:
        response = api.get(f"/api/v1/messages?{query}", headers=headers)
        assert response.status_code == 200, response.json
        return [m["key"] for m in response.json["messages"]]

    assert keys() == [third, second, first]
    assert keys("type=ADT") == [second]
    assert keys("outcome=AA") == [third, first]
    since = (now - dt.timedelta(days=1)).replace(tzinfo=dt.UTC).isoformat()
    assert keys(f"since={since.replace('+', '%2B')}") == [third, second]
    until = (now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert keys(f"until={until}") == [first]

    page = api.get("/api/v1/messages?limit=2", headers=headers).json
    assert [m["key"] for m in page["messages"]] == [third, second]
    assert page["next_before"] == second
    assert keys(f"before={page['next_before']}&limit=2") == [first]
    last = api.get(f"/api/v1/messages?before={first}", headers=headers).json
    assert last == {"messages": [], "next_before": None}

    listed = api.get("/api/v1/messages?type=ADT", headers=headers).json["messages"][0]
    assert listed["message_control_id"] == "CTRL-2" and listed["error"] == "unknown patient"
    assert listed["received_at"] == (now - dt.timedelta(hours=1)).replace(tzinfo=dt.UTC).isoformat()

    for query, field in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("before=abc", "before"),
        ("before=99999999999", "before"),
        ("outcome=OK", "outcome"),
        ("since=yesterday", "since"),
        ("until=2031-02-30", "until"),
    ]:
        response = api.get(f"/api/v1/messages?{query}", headers=headers)
        assert response.status_code == 400, query
        assert set(response.json["errors"]) == {field}


def test_message_detail_has_raw_text_and_ack(api, tokens, session_factory):
    key = add_message(session_factory)
    unanswered = add_message(
        session_factory, raw=b"MSH|^~\\&|X|\xe9\r", ack=None, outcome="RECEIVED"
    )
    headers = bearer(tokens["viewer"])
    detail = api.get(f"/api/v1/messages/{key}", headers=headers).json
    assert detail["raw"] == RAW.decode()
    assert detail["ack"] == ACK.decode()
    assert detail["message_type"] == "ORM^O01" and detail["outcome"] == "AA"
    other = api.get(f"/api/v1/messages/{unanswered}", headers=headers).json
    assert other["ack"] is None and other["processed_at"] is not None
    assert other["raw"] == "MSH|^~\\&|X|\u00e9\r"  # not UTF-8: read as Latin-1
    for missing in (key + 100, 2**40):
        response = api.get(f"/api/v1/messages/{missing}", headers=headers)
        assert response.status_code == 404 and response.is_json


def test_aes_lists_the_calling_ae_titles(api, tokens, session_factory):
    now = utcnow()
    with session_factory.begin() as session:
        session.add_all(
            [
                QueryLogEntry(
                    received_at=now, calling_ae_title="CT01", peer_address="10.0.0.5", matches=3
                ),
                QueryLogEntry(received_at=now, calling_ae_title="CT01", matches=2, status=0xA900),
                QueryLogEntry(
                    received_at=now - dt.timedelta(days=3), calling_ae_title="MR01", matches=1
                ),
            ]
        )
    response = api.get("/api/v1/aes", headers=bearer(tokens["viewer"]))
    assert response.status_code == 200
    ct, mr = response.json["aes"]
    assert ct["calling_ae_title"] == "CT01"
    assert (ct["queries_today"], ct["matches_today"], ct["failures_today"]) == (2, 5, 1)
    assert (mr["calling_ae_title"], mr["queries_today"], mr["total_queries"]) == ("MR01", 0, 1)
    assert mr["last_seen"].endswith("+00:00")


def test_api_errors_are_json_and_no_cookie_is_set(api, tokens):
    headers = bearer(tokens["admin"])
    cases = [
        (api.get("/api/v1/nothing", headers=headers), 404),
        (api.get("/api/v1/items/abc", headers=headers), 404),
        (api.delete("/api/v1/items", headers=headers), 405),
        (api.put("/api/v1/items/1", json={}, headers=headers), 405),
        (api.post("/api/v1/aes", headers=headers), 405),  # a POST without CSRF token: still 405
        (api.get("/api/v1/items", headers=headers), 200),
    ]
    for response, status in cases:
        assert response.status_code == status
        assert response.mimetype == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        assert "Set-Cookie" not in response.headers
        if status == 405:
            assert "GET" in response.headers["Allow"]
        if status >= 400:
            assert set(response.json) == {"error"}


def test_last_use_of_a_token_is_recorded_once_a_minute(api, tokens, session_factory):
    def last_used() -> dt.datetime | None:
        with session_factory() as session:
            (viewer,) = [t for t in list_tokens(session, "api-viewer")]
            return viewer.last_used_at

    assert last_used() is None
    api.get("/api/v1/aes", headers=bearer(tokens["viewer"]))
    first = last_used()
    assert first is not None and abs(first - utcnow()) < dt.timedelta(minutes=1)
    api.get("/api/v1/aes", headers=bearer(tokens["viewer"]))
    assert last_used() == first


def test_openapi_document_is_served_without_a_token(api):
    response = api.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    paths = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    api = {(method, path) for method, path in paths if path.startswith("/api/v1/")}
    assert api == {(method, path.replace("{message}", "{key}")) for method, path, _, _ in ROUTES}
    # And the DICOMweb resources (web/dicomweb.py), with the same bearer tokens.
    assert paths - api == {
        ("GET", "/dicomweb/modality-scheduled-procedure-steps"),
        ("GET", "/dicomweb/modality-performed-procedure-steps/{uid}"),
        ("POST", "/dicomweb/modality-performed-procedure-steps/{uid}"),
    }
    json.dumps(document)  # plain data only
