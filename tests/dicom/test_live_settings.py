"""Trusted AEs and profiles changed on the admin page apply to the next association, no restart.

A running SCP (real sockets, ephemeral port) with :class:`mwl.admin.overrides.LiveSettings`;
the changes are made through the settings page (Flask test client, CSRF on) as an
admin would make them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pytest
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings
from mwl.config import Settings
from mwl.dicom.scp import WorklistScp
from mwl.domain import Order
from mwl.orders.apply import apply_order
from mwl.store.engine import make_session_factory
from tests.factories import one_step_order
from tests.rawscu import association_rejection
from tests.settings_page import form_values, log_in_as, submit
from web import create_app

pytestmark = pytest.mark.e2e

TODAY = dt.date.today()
# Calling AE title not recognised: A-ASSOCIATE-RJ result, source, reason (PS3.8 9.3.4).
REJECTED_CALLING_AE = (0x01, 0x01, 0x03)


def ct_order(accession: str, day: dt.date) -> Order:
    start = dt.datetime.combine(day, dt.time(12, 0))
    return one_step_order(
        accession,
        start,
        patient_id=f"P{accession}",
        placer=f"PL{accession}",
        sps_id=f"S{accession}",
    )


@pytest.fixture
def readers(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def scp(
    settings: Settings, readers: sessionmaker[Session], session_factory: sessionmaker[Session]
) -> Iterator[WorklistScp]:
    """An SCP following the page: settings re-read on every use (refresh 0)."""
    with session_factory.begin() as session:
        apply_order(session, ct_order("ACCTODAY", TODAY))
        apply_order(session, ct_order("ACCLATER", TODAY + dt.timedelta(days=3)))
    base = settings.replace(dicom_ae_title="MWLTEST")
    live = LiveSettings(base, readers, refresh_seconds=0)
    with WorklistScp(base, readers, session_factory, live_settings=live) as server:
        yield server


@pytest.fixture
def admin(
    settings: Settings, readers: sessionmaker[Session], session_factory: sessionmaker[Session]
) -> FlaskClient:
    """The settings page as an admin sees it, CSRF protection on."""
    app = create_app(settings.replace(dicom_ae_title="MWLTEST"), readers, config={"TESTING": True})
    return log_in_as(app.test_client(), session_factory, "root", "admin")


def accessions(
    scp: WorklistScp, find: Callable[..., object], identifier: Callable[..., Dataset], ae: str
) -> list[str]:
    result = find(scp.address, identifier(), calling_ae=ae)
    return sorted(str(ds.AccessionNumber) for ds in result.identifiers)  # type: ignore[attr-defined]


def association_answer(scp: WorklistScp, calling_ae: str) -> tuple[int, int, int] | None:
    """(result, source, reason) of an A-ASSOCIATE-RJ, or None when accepted."""
    return association_rejection(scp.address, calling_ae, "MWLTEST")


def test_trusted_aes_set_on_the_page_apply_to_the_next_association(
    scp: WorklistScp, admin: FlaskClient, find, identifier
) -> None:
    both = ["ACCLATER", "ACCTODAY"]
    assert accessions(scp, find, identifier, "ROGUE") == both
    assert association_answer(scp, "ROGUE") is None

    response = submit(admin, "/admin/aes", {"restrict": "y", "profiles-0-ae_title": "CT01"})
    assert response.status_code == 302
    # Same SCP, no restart: CT01 still served, ROGUE now refused at association.
    assert accessions(scp, find, identifier, "CT01") == both
    assert association_answer(scp, "ROGUE") == REJECTED_CALLING_AE
    assert association_answer(scp, "CT01") is None

    # The reset button on the page: anyone may connect again.
    path = "/admin/settings/dicom_restrict_calling_ae/reset"
    reset_form = form_values(admin.get("/admin/aes").get_data(as_text=True), path)
    assert admin.post(path, data=reset_form).status_code == 302
    assert association_answer(scp, "ROGUE") is None


def test_profile_changes_on_the_page_change_the_next_c_find(
    scp: WorklistScp, admin: FlaskClient, find, identifier
) -> None:
    submit(admin, "/admin/aes", {"profiles-0-ae_title": "CT01", "profiles-0-date_window_days": "1"})
    assert accessions(scp, find, identifier, "CT01") == ["ACCTODAY"]
    assert accessions(scp, find, identifier, "MR01") == ["ACCLATER", "ACCTODAY"]  # no profile

    submit(admin, "/admin/aes", {"profiles-0-date_window_days": "7"})
    assert accessions(scp, find, identifier, "CT01") == ["ACCLATER", "ACCTODAY"]

    # Only ARRIVED steps shown to CT01 when it names no status: both are SCHEDULED.
    submit(admin, "/admin/aes", {"profiles-0-visible_statuses": ["ARRIVED"]})
    assert accessions(scp, find, identifier, "CT01") == []

    submit(admin, "/admin/aes", {"profiles-0-visible_statuses": None, "max_matches": "1"})
    assert len(accessions(scp, find, identifier, "CT01")) == 1
    assert len(accessions(scp, find, identifier, "MR01")) == 1


def test_response_charsets_offered_on_the_page_are_ones_the_scp_can_write() -> None:
    from mwl.admin.overrides import RESPONSE_CHARSETS
    from mwl.dicom.profiles import check_charset

    for term in RESPONSE_CHARSETS:
        check_charset(term, "dicom_response_charset")


def test_scp_without_live_settings_keeps_its_start_up_policy(
    settings: Settings, readers, session_factory, admin: FlaskClient
) -> None:
    fixed = settings.replace(dicom_ae_title="MWLTEST")
    with WorklistScp(fixed, readers, session_factory) as server:
        submit(admin, "/admin/aes", {"restrict": "y", "profiles-0-ae_title": "CT01"})
        assert association_answer(server, "ROGUE") is None
