"""HL7 mapping and routing rules changed on the admin page apply to the next message, no restart.

A running listener (real MLLP socket, ephemeral port) with
:class:`mwl.admin.overrides.LiveSettings`; the rules are changed through the settings page
(Flask test client, CSRF on) as an admin would change them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings
from mwl.config import Settings
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.server import Hl7Server
from mwl.store.engine import make_session_factory
from mwl.store.models import ScheduledProcedureStep
from tests.settings_page import form_values, log_in_as, submit
from web import create_app

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "hl7" / "orm_o01_nw.hl7"


def order_message(n: int, modality: str) -> bytes:
    """The sample new order with its identifiers made unique by ``n`` and OBR-24 set."""
    fields = {
        (b"MSH", 10): f"LIVE{n}",
        (b"ORC", 2): f"PL{n}",
        (b"ORC", 3): f"FI{n}",
        (b"OBR", 2): f"PL{n}",
        (b"OBR", 3): f"FI{n}",
        (b"OBR", 18): f"ACC{n}",
        (b"OBR", 19): f"RP{n}",
        (b"OBR", 20): f"SPS{n}",
        (b"OBR", 24): modality,
        (b"ZDS", 1): f"1.2.826.0.1.3680043.10.543.77.{n}^MWL^Application^DICOM",
    }
    lines = SAMPLE.read_bytes().replace(b"\n", b"").split(b"\r")
    for index, line in enumerate(lines):
        parts = line.split(b"|")
        for (segment, position), value in fields.items():
            if parts[0] == segment:
                n_field = position - 1 if segment == b"MSH" else position
                parts += [b""] * (n_field + 1 - len(parts))
                parts[n_field] = value.encode()
        lines[index] = b"|".join(parts)
    return b"\r".join(lines)


@pytest.fixture
def readers(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def server(
    settings: Settings, readers: sessionmaker[Session], session_factory: sessionmaker[Session]
) -> Iterator[Hl7Server]:
    """A listener following the page: settings re-read on every message (refresh 0)."""
    live = LiveSettings(settings, readers, refresh_seconds=0)
    with Hl7Server(settings, session_factory, live_settings=live) as listener:
        yield listener


@pytest.fixture
def admin(
    settings: Settings, readers: sessionmaker[Session], session_factory: sessionmaker[Session]
) -> FlaskClient:
    """The settings page as an admin sees it, CSRF protection on."""
    app = create_app(settings, readers, config={"TESTING": True})
    return log_in_as(app.test_client(), session_factory, "root", "admin")


def send(server: Hl7Server, message: bytes) -> str:
    (ack,) = send_messages(*server.address, [message], timeout=10)
    return ack_summary(ack)[0]


def step(session_factory: sessionmaker[Session], n: int) -> tuple[str, str]:
    """(modality, station AE title) stored for message ``n``'s step."""
    with session_factory() as session:
        found = session.scalars(
            select(ScheduledProcedureStep).where(
                ScheduledProcedureStep.scheduled_procedure_step_id == f"SPS{n}"
            )
        ).one()
        return found.modality, found.scheduled_station_ae_title


def test_modality_map_and_station_rule_from_the_page_apply_to_the_next_message(
    server: Hl7Server, admin: FlaskClient, session_factory
) -> None:
    assert send(server, order_message(1, "CAT")) == "AA"
    assert step(session_factory, 1) == ("CAT", "")

    response = submit(
        admin,
        "/admin/hl7",
        {
            "modality_map-1-sent": "CAT",
            "modality_map-1-modality": "CT",
            "station_rules-0-modality": "CT",
            "station_rules-0-station_ae_title": "CT_ROUTED",
        },
    )
    assert response.status_code == 302
    # Same listener, no restart: the next message is mapped and routed by the new rules.
    assert send(server, order_message(2, "CAT")) == "AA"
    assert step(session_factory, 2) == ("CT", "CT_ROUTED")
    # What was stored before stays as it was.
    assert step(session_factory, 1) == ("CAT", "")


def test_accepted_senders_from_the_page_apply_to_the_next_message(
    server: Hl7Server, admin: FlaskClient, session_factory
) -> None:
    assert send(server, order_message(1, "CT")) == "AA"
    submit(admin, "/admin/hl7", {"accepted_senders": "LAB|*"})
    assert send(server, order_message(2, "CT")) == "AR"  # RIS|HOSPITAL no longer listed

    path = "/admin/settings/hl7_accepted_senders/reset"
    reset_form = form_values(admin.get("/admin/hl7").get_data(as_text=True), path)
    assert admin.post(path, data=reset_form).status_code == 302
    assert send(server, order_message(3, "CT")) == "AA"


def test_missing_start_policy_from_the_page(
    server: Hl7Server, admin: FlaskClient, session_factory
) -> None:
    def without_start(n: int) -> bytes:
        message = order_message(n, "CT")
        assert b"^^^20261121093000^^R" in message
        return message.replace(b"^^^20261121093000^^R", b"^^^^^R")  # ORC-7.4 empty

    assert send(server, without_start(1)) == "AA"  # the default: scheduled now
    submit(admin, "/admin/hl7", {"missing_start": "reject"})
    assert send(server, without_start(2)) == "AE"


def test_listener_without_live_settings_keeps_its_start_up_rules(
    settings: Settings, session_factory, admin: FlaskClient
) -> None:
    with Hl7Server(settings, session_factory) as fixed:
        submit(admin, "/admin/hl7", {"modality_map-1-sent": "CAT", "modality_map-1-modality": "CT"})
        assert send(fixed, order_message(1, "CAT")) == "AA"
    assert step(session_factory, 1) == ("CAT", "")
