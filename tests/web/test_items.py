"""The item page, editing, cancel/restore and new orders through the Flask test client."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from mwl.admin.users import hash_password
from mwl.dicom.listing import item_attributes
from mwl.store.models import (
    AuditEvent,
    Hl7Message,
    Hl7MessageLink,
    Patient,
    PerformedProcedureStep,
    ScheduledProcedureStep,
    User,
    mpps_sps,
)
from mwl.store.models import RequestedProcedure as ProcedureRow
from web import create_app

PASSWORD = "correct horse battery staple"
START = dt.datetime(2026, 11, 21, 9, 30)
_CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@functools.cache
def password_hash() -> str:
    # scrypt is slow by design: one hash for every account of the run.
    return hash_password(PASSWORD)


def add_account(session_factory, role: str) -> None:
    with session_factory.begin() as session:
        session.add(User(username=role, password_hash=password_hash(), role=role))


@pytest.fixture
def sign_in(session_factory):
    """``sign_in(app, role)``: a client logged in as a new account named for its role."""
    made: set[str] = set()

    def log_in(app, role: str | None) -> FlaskClient:
        client = app.test_client()
        if role is None:
            return client
        if role not in made:
            add_account(session_factory, role)
            made.add(role)
        response = client.post("/login", data={"username": role, "password": PASSWORD})
        assert response.status_code == 302
        return client

    return log_in


@pytest.fixture
def step_key(add_order, session_factory) -> int:
    add_order("ACC1", START, patient_id="PAT1", patient_name="Doe^Jane")
    with session_factory() as session:
        return session.scalars(select(ScheduledProcedureStep.id)).one()


def stored(session_factory):
    with session_factory() as session:
        step = session.scalars(select(ScheduledProcedureStep)).first()
        patient = session.scalars(select(Patient)).first()
        events = session.scalar(select(func.count()).select_from(AuditEvent))
        return (patient.patient_name, step.start_datetime, step.status, events)


def edit_form(**overrides: str) -> dict[str, str]:
    form = {
        "name_family": "Doe",
        "name_given": "Jane",
        "patient_birth_date": "1980-02-14",
        "patient_sex": "F",
        "start": "2026-11-21T09:30:00",
        "modality": "CT",
        "scheduled_station_ae_title": "CT01",
        "scheduled_station_name": "",
        "scheduled_procedure_step_location": "",
        "requested_procedure_description": "CT head without contrast",
        "scheduled_procedure_step_description": "CT head without contrast",
        "scheduled_performing_physician_name": "",
        "reason": "",
    }
    form.update(overrides)
    return form


# Route, method, form data: every route of the blueprint.
def routes(key: int) -> list[tuple[str, str, dict[str, str]]]:
    return [
        ("GET", f"/items/{key}", {}),
        ("GET", f"/items/{key}/edit", {}),
        ("POST", f"/items/{key}/edit", edit_form(name_given="Janet")),
        ("POST", f"/items/{key}/cancel", {"reason": "no show", "confirm": "yes"}),
        ("POST", f"/items/{key}/restore", {}),
        ("GET", "/orders/new", {}),
        ("POST", "/orders/new", {"modality": "CT", "unidentified": "yes"}),
    ]


def test_anonymous_visitors_are_sent_to_log_in_and_nothing_changes(
    app, sign_in, step_key, session_factory
):
    before = stored(session_factory)
    client = sign_in(app, None)
    for method, path, data in routes(step_key):
        response = client.open(path, method=method, data=data)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next="), path
        assert b"Doe" not in response.data
    assert stored(session_factory) == before


def test_a_viewer_sees_the_item_but_may_change_nothing(app, sign_in, step_key, session_factory):
    before = stored(session_factory)
    client = sign_in(app, "viewer")
    page = client.get(f"/items/{step_key}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Doe, Jane" in html and "ACC1" in html
    assert f"/items/{step_key}/edit" not in html  # no Edit link, no cancel form
    assert f"/items/{step_key}/cancel" not in html
    assert "/orders/new" not in html  # nor the navigation link
    for method, path, data in routes(step_key)[1:]:
        response = client.open(path, method=method, data=data)
        assert response.status_code == 403, path
        assert "This needs the editor role." in response.get_data(as_text=True)
    assert stored(session_factory) == before
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ProcedureRow)) == 1


def test_editors_and_admins_may_use_every_route(app, sign_in, step_key):
    for role in ("editor", "admin"):
        client = sign_in(app, role)
        got = [
            client.open(path, method=method, data=data).status_code
            for method, path, data in routes(step_key)
        ]
        assert got == [200, 200, 302, 302, 302, 200, 302], role


def test_unknown_items_are_not_found(app, sign_in):
    client = sign_in(app, "editor")
    for method, path, data in routes(4242)[:5]:
        response = client.open(path, method=method, data=data)
        assert response.status_code == 404, path
        assert "There is no worklist item with this number." in response.get_data(as_text=True)


def test_editing_saves_records_and_shows_the_trail(app, sign_in, step_key, session_factory):
    client = sign_in(app, "editor")
    form = client.get(f"/items/{step_key}/edit").get_data(as_text=True)
    assert 'value="Doe"' in form and 'value="2026-11-21T09:30:00"' in form
    assert "a later HL7 message about it overwrites" in form
    assert "every order of this patient" in form
    response = client.post(
        f"/items/{step_key}/edit",
        data=edit_form(name_given="Janet", start="2026-11-21T11:45", reason="wrong name"),
        follow_redirects=True,
    )
    assert response.request.path == f"/items/{step_key}"
    html = response.get_data(as_text=True)
    assert "The changes are saved." in html
    assert "Doe, Janet" in html
    # The trail: who, what, before -> after, reason.
    trail = html[html.index("Audit trail") :]
    assert "editor" in trail and "Edited" in trail and "wrong name" in trail
    assert "Doe^Jane</span>" not in trail  # values are shown as text, not markup
    # ... in the forms the page shows them in (a name as people write it).
    assert "Doe, Jane → Doe, Janet" in trail
    assert "Nov 21, 2026, 9:30\u202fAM → Nov 21, 2026, 11:45\u202fAM" in trail
    name, start, _status, events = stored(session_factory)
    assert (name, start, events) == ("Doe^Janet", dt.datetime(2026, 11, 21, 11, 45), 1)


def test_saving_the_form_unchanged_records_nothing(app, sign_in, step_key, session_factory):
    client = sign_in(app, "editor")
    response = client.post(f"/items/{step_key}/edit", data=edit_form(), follow_redirects=True)
    assert "Nothing was changed." in response.get_data(as_text=True)
    assert stored(session_factory)[3] == 0


BAD_EDITS = [
    ({"patient_birth_date": "1980-02-30"}, "patient_birth_date", "Not a calendar date"),
    ({"start": "tomorrow"}, "start", "Not a date and time"),
    ({"start": ""}, "start", "This is required."),
    ({"modality": "C/T"}, "modality", "A-Z"),
    ({"scheduled_station_ae_title": "A" * 17}, "scheduled_station_ae_title", "At most 16"),
    ({"name_family": "Doe^Smith"}, "patient_name", "not allowed in a name part"),
    ({"name_family": "", "name_given": ""}, "patient_name", "family or given name"),
    ({"reason": "r" * 300}, "reason", "At most 255"),
]


def test_bad_input_shows_the_message_next_to_the_field_and_stores_nothing(
    app, sign_in, step_key, session_factory, caplog
):
    caplog.set_level(logging.INFO, logger="web.items")
    before = stored(session_factory)
    client = sign_in(app, "editor")
    for overrides, field, message in BAD_EDITS:
        response = client.post(
            f"/items/{step_key}/edit", data=edit_form(**{"name_given": "Janet", **overrides})
        )
        assert response.status_code == 422, overrides
        html = response.get_data(as_text=True)
        assert "Nothing was saved." in html
        error = re.search(rf'<span class="field-error" id="{field}-error">([^<]*)</span>', html)
        assert error, overrides
        assert message in error.group(1), overrides
        # The input (for the name: its fieldset) points at its message.
        control = r'<fieldset class="name"' if field == "patient_name" else rf'id="{field}"'
        assert re.search(rf'{control}[^>]*aria-describedby="[^"]*{field}-error"', html), field
        # What was typed stays in the form.
        assert f'value="{overrides.get("name_given", "Janet")}"' in html, overrides
    assert stored(session_factory) == before
    # Refusals are logged by field name, never with the values (patient data).
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == len(BAD_EDITS)
    assert f"edit of worklist item {step_key} refused: patient_birth_date" in refused
    assert not any("Janet" in text or "Doe" in text for text in refused)


def test_the_rule_charset_message_is_clear(settings, reader_factory, sign_in, step_key):
    latin1 = create_app(
        settings.replace(dicom_response_charset="ISO_IR 100"),
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
    )
    client = sign_in(latin1, "editor")
    response = client.post(f"/items/{step_key}/edit", data=edit_form(name_given="Анна"))
    assert response.status_code == 422
    assert "cannot be sent to the modalities (character set ISO_IR 100)" in response.get_data(
        as_text=True
    )


def test_a_temporary_patient_id_can_be_replaced_on_the_form(
    app, sign_in, add_order, session_factory
):
    add_order("EM1", START, patient_id="TMP202611210001", patient_name="UNKNOWN^X^093000")
    with session_factory() as session:
        key = session.scalars(select(ScheduledProcedureStep.id)).one()
    client = sign_in(app, "editor")
    form = client.get(f"/items/{key}/edit").get_data(as_text=True)
    assert 'id="patient_id"' in form
    data = edit_form(name_family="Roe", name_given="Rita", patient_id="PAT77")
    data["issuer_of_patient_id"] = "HOSP"
    client.post(f"/items/{key}/edit", data=data)
    with session_factory() as session:
        assert session.scalars(select(Patient.patient_id)).all() == ["PAT77"]
    # A RIS patient ID is shown, not offered for editing, and ignored if posted.
    form = client.get(f"/items/{key}/edit").get_data(as_text=True)
    assert 'id="patient_id"' not in form
    client.post(f"/items/{key}/edit", data=edit_form(name_family="Roe", patient_id="X"))
    with session_factory() as session:
        assert session.scalars(select(Patient.patient_id)).all() == ["PAT77"]


def test_cancel_and_restore(app, sign_in, step_key, session_factory):
    client = sign_in(app, "editor")
    page = client.get(f"/items/{step_key}").get_data(as_text=True)
    assert "Cancel this step" in page and "Restore this step" not in page
    # The button asks first (a page, no JavaScript); nothing changes until confirmed.
    asked = client.post(f"/items/{step_key}/cancel", data={"reason": "patient left"})
    question = asked.get_data(as_text=True)
    assert asked.status_code == 200 and "Cancel this step?" in question
    assert 'name="confirm" value="yes"' in question and 'value="patient left"' in question
    assert stored(session_factory)[2] == "SCHEDULED"
    response = client.post(
        f"/items/{step_key}/cancel",
        data={"reason": "patient left", "confirm": "yes"},
        follow_redirects=True,
    )
    html = response.get_data(as_text=True)
    assert "The step is canceled; modalities no longer see it." in html
    assert "Modalities do not see this step while its status is Canceled." in html
    assert "Undo: restore the step" in html
    assert "Restore this step" in html and "Cancel this step" not in html
    assert "patient left" in html
    assert stored(session_factory)[2] == "CANCELED"
    again = client.post(f"/items/{step_key}/cancel", follow_redirects=True)
    assert "The step is canceled already." in again.get_data(as_text=True)
    response = client.post(f"/items/{step_key}/restore", follow_redirects=True)
    assert "The step is restored." in response.get_data(as_text=True)
    assert stored(session_factory)[2:] == ("SCHEDULED", 2)


def test_a_started_step_offers_no_cancel_and_refuses_one(app, sign_in, add_order, session_factory):
    add_order("ACC9", START, control="XO", order_status="IP")
    with session_factory() as session:
        key = session.scalars(select(ScheduledProcedureStep.id)).one()
    client = sign_in(app, "editor")
    page = client.get(f"/items/{key}").get_data(as_text=True)
    assert "Cancel this step" not in page
    response = client.post(f"/items/{key}/cancel", follow_redirects=True)
    assert "cannot be canceled" in response.get_data(as_text=True)
    edit_page = client.get(f"/items/{key}/edit").get_data(as_text=True)
    assert re.search(r'id="start"[^>]*readonly', edit_page)


def test_csrf_is_required_for_every_change(csrf_app, step_key, session_factory):
    add_account(session_factory, "editor")
    before = stored(session_factory)
    client = csrf_app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = _CSRF_INPUT.search(page).group(1)
    login = {"username": "editor", "password": PASSWORD, "csrf_token": token}
    assert client.post("/login", data=login).status_code == 302
    for method, path, data in routes(step_key):
        if method == "POST":
            response = client.post(path, data=data)
            assert response.status_code == 400, path
            assert "security token" in response.get_data(as_text=True)
    assert stored(session_factory) == before
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ProcedureRow)) == 1
    form = client.get(f"/items/{step_key}/edit").get_data(as_text=True)
    token = _CSRF_INPUT.search(form).group(1)
    response = client.post(
        f"/items/{step_key}/edit", data={**edit_form(name_given="Janet"), "csrf_token": token}
    )
    assert response.status_code == 302
    assert stored(session_factory)[0] == "Doe^Janet"


def test_a_new_order_for_an_unidentified_patient(app, sign_in, session_factory):
    client = sign_in(app, "editor")
    form = client.get("/orders/new").get_data(as_text=True)
    assert "Unidentified patient" in form and 'value="STAT" selected' in form
    response = client.post(
        "/orders/new",
        data={
            "unidentified": "yes",
            "patient_sex": "M",
            "modality": "ct",
            "scheduled_station_ae_title": "CT_ER",
            "start": "2026-11-21T10:05",
            "requested_procedure_description": "CT polytrauma",
            "priority": "STAT",
        },
        follow_redirects=True,
    )
    html = response.get_data(as_text=True)
    # The accession number carries the day of entry (YYMMDD), not of the start.
    assert re.search(r"Order EM\d{10} is on the worklist\.", html)
    with session_factory() as session:
        patient = session.scalars(select(Patient)).one()
        procedure = session.scalars(select(ProcedureRow)).one()
    assert patient.patient_id.startswith("TMP20")
    assert patient.patient_name.startswith("UNKNOWN^M^")
    assert procedure.requested_procedure_priority == "STAT"
    assert "CT polytrauma" in html and patient.patient_id in html
    assert "Created" in html[html.index("Audit trail") :]


def test_a_new_order_with_bad_input_is_shown_again_and_nothing_is_stored(
    app, sign_in, session_factory
):
    client = sign_in(app, "editor")
    response = client.post(
        "/orders/new",
        data={
            "modality": "",
            "patient_id": "NEW1",
            "name_family": "Roe",
            "patient_birth_date": "2999-01-01",
            "priority": "SOON",
            "start": "2026-13-01T10:00",
        },
    )
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="start-error">Not a date and time' in html
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 0
    response = client.post(
        "/orders/new",
        data={
            "modality": "",
            "patient_id": "NEW1",
            "name_family": "Roe",
            "patient_birth_date": "2999-01-01",
            "priority": "SOON",
        },
    )
    html = response.get_data(as_text=True)
    for field in ("modality", "patient_birth_date", "priority"):
        assert f'id="{field}-error"' in html, field
    assert 'value="NEW1"' in html and 'value="Roe"' in html
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 0
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_the_item_page_shows_messages_mpps_and_the_dicom_listing(
    settings, reader_factory, sign_in, step_key, session_factory
):
    with session_factory.begin() as session:
        step = session.get(ScheduledProcedureStep, step_key)
        message = Hl7Message(
            raw=b"MSH|^~\\&|RIS|HOSP",
            message_type="ORM^O01",
            message_control_id="CTRL42",
            sending_application="RIS",
            outcome="AA",
        )
        session.add(message)
        mpps = PerformedProcedureStep(
            sop_instance_uid="1.2.826.0.1.3680043.2.1",
            status="IN PROGRESS",
            performed_station_ae_title="CT01",
            modality="CT",
            start_datetime=dt.datetime(2026, 11, 21, 9, 41),
        )
        session.add(mpps)
        session.flush()
        session.add(
            Hl7MessageLink(
                message_key=message.id,
                patient_key=step.procedure.patient_key,
                procedure_key=step.procedure_key,
            )
        )
        session.execute(mpps_sps.insert().values(mpps_key=mpps.id, sps_key=step_key))
        message_key = message.id
    app = create_app(
        settings,
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
        item_lister=functools.partial(item_attributes, settings=settings),
    )
    html = sign_in(app, "viewer").get(f"/items/{step_key}").get_data(as_text=True)
    assert f'href="/messages/{message_key}"' in html and "CTRL42" in html
    assert "1.2.826.0.1.3680043.2.1" in html and "Nov 21, 2026, 9:41:00 AM" in html
    listing = html[html.index("What the modality receives") :]
    assert "(0010,0010)" in listing and "Patient&#39;s Name" in listing
    assert "Doe^Jane" in listing
    assert "(0040,0100)" in listing and 'class="depth-1' in listing
    assert "ScheduledProcedureStepStartTime" in listing and "093000" in listing


def test_without_the_dicom_service_the_page_says_so(app, sign_in, step_key):
    html = sign_in(app, "viewer").get(f"/items/{step_key}").get_data(as_text=True)
    assert "The DICOM listing is not available here" in html
    assert "No HL7 message is linked to this item" in html
    assert "No modality has reported performing this step." in html
    assert "Nobody has changed this item on the page." in html


def test_a_refused_status_change_shows_its_errors_next_to_the_fields(app, sign_in, step_key):
    client = sign_in(app, "editor")
    page = client.get(f"/items/{step_key}").get_data(as_text=True)
    # Only what the table allows after SCHEDULED is offered (cancel has its own button).
    select = page[
        page.index('id="new-status"') : page.index("</select>", page.index('id="new-status"'))
    ]
    assert re.findall(r'<option value="([A-Z]+)"', select) == [
        "ARRIVED",
        "READY",
        "STARTED",
        "HELD",
    ]
    response = client.post(f"/items/{step_key}/status", data={"status": "COMPLETED", "reason": ""})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="status-error"' in html and 'id="reason-error"' in html
    assert "A SCHEDULED step cannot become COMPLETED" in html
    assert "Say why the status is changed by hand." in html
    assert 'aria-describedby="status-hint reason-error"' in html
    german = client.post(
        f"/items/{step_key}/status",
        data={"status": "COMPLETED", "reason": "x"},
        headers={"Accept-Language": "de"},
    ).get_data(as_text=True)
    assert "Eine Untersuchung mit Status SCHEDULED kann nicht COMPLETED werden" in german
    done = client.post(
        f"/items/{step_key}/status", data={"status": "ARRIVED", "reason": "at the desk"}
    )
    assert done.status_code == 303
    page = client.get(f"/items/{step_key}").get_data(as_text=True)
    assert "Status changed" in page and "Scheduled → Arrived" in page and "at the desk" in page
