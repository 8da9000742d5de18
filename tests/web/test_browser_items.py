"""In Chromium: edit an item, enter an emergency order, cancel one; a real C-FIND sees each."""

from __future__ import annotations

import datetime as dt
import functools
import re

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from mwl.admin.users import add_user
from mwl.dicom.listing import item_attributes
from mwl.dicom.scp import WorklistScp
from mwl.store.models import ScheduledProcedureStep
from tests.browser import chromium, log_in, screenshot, serving
from tests.scu import c_find
from web import create_app

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
START = dt.datetime.combine(dt.date.today(), dt.time(9, 30))


def worklist(port: int) -> dict[str, Dataset]:
    """What a modality gets for a query without conditions, by accession number."""
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.PatientName = ""
    identifier.PatientID = ""
    identifier.AccessionNumber = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = ""
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledProcedureStepStartTime = ""
    identifier.ScheduledProcedureStepSequence = [sps]
    matches, status = c_find(port, identifier, calling_ae="CT01", called_ae="MWLTEST")
    assert status == 0x0000
    return {str(m.AccessionNumber): m for m in matches}


def test_edit_create_and_cancel_reach_the_modality(
    settings, reader_factory, session_factory, add_order
):
    from playwright.sync_api import expect

    add_order("ACC1", START, patient_id="PAT1", patient_name="Doe^Jane", station="CT01")
    with session_factory() as session:
        key = session.scalars(select(ScheduledProcedureStep.id)).one()
    with session_factory.begin() as session:
        add_user(session, "erin", PASSWORD, "editor")
    app = create_app(
        settings,
        reader_factory,
        config={"TESTING": True},  # CSRF on, as in production
        item_lister=functools.partial(item_attributes, settings=settings),
    )
    scp = WorklistScp(settings.replace(dicom_ae_title="MWLTEST"), reader_factory)
    with scp, serving(app) as base, chromium() as browser:
        port = scp.address[1]
        assert worklist(port)["ACC1"].PatientName == "Doe^Jane"
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        log_in(page, base, "erin", PASSWORD)

        # The item page: stored values and what the modality receives.
        page.goto(f"{base}/items/{key}")
        expect(page.get_by_role("heading", level=1)).to_contain_text("Doe, Jane")
        # The full listing is folded away until asked for (it is long).
        page.locator("details.dicom-listing summary").click()
        listing = page.get_by_role("table").filter(has_text="(0010,0010)")
        expect(listing.get_by_role("row").filter(has_text="Patient's Name")).to_contain_text(
            "Doe^Jane"
        )
        screenshot(page, "item")

        # Edit: a bad birth date is refused with its message, then name and time fixed.
        page.get_by_role("link", name="Edit").click()
        page.get_by_label("Given name").fill("Janet")
        page.get_by_label("Birth date").fill("2999-01-01")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_role("alert")).to_contain_text("Nothing was saved.")
        expect(page.locator("#patient_birth_date-error")).to_have_text("The date is in the future.")
        screenshot(page, "item_edit_error")
        page.get_by_label("Birth date").fill("1980-02-14")
        new_start = START.replace(hour=11, minute=45)
        page.get_by_label("Scheduled start").fill(new_start.strftime("%Y-%m-%dT%H:%M:%S"))
        page.get_by_label("Reason for the change").fill("name misspelt at registration")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_text("The changes are saved.")).to_be_visible()
        trail = page.get_by_role("table").filter(has_text="name misspelt")
        expect(trail).to_contain_text("Doe, Jane → Doe, Janet")
        screenshot(page, "item_edited")
        seen = worklist(port)["ACC1"]
        assert seen.PatientName == "Doe^Janet"
        assert seen.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "114500"

        # An emergency order for a patient nobody knows yet.
        page.get_by_role("link", name="New order").click()
        page.get_by_label("Unidentified patient").check()
        page.get_by_label("Sex").select_option("M")
        page.get_by_label("Modality").fill("CT")
        page.get_by_label("Station AE title").fill("CT01")
        page.get_by_label("Procedure description").fill("CT polytrauma")
        screenshot(page, "order_new")
        page.get_by_role("button", name="Create order").click()
        flash = page.get_by_role("status").filter(has_text="is on the worklist")
        expect(flash).to_be_visible()
        accession = re.search(r"Order (\S+) is", flash.inner_text()).group(1)
        screenshot(page, "order_created")
        emergency = worklist(port)[accession]
        assert str(emergency.PatientID).startswith("TMP")
        assert str(emergency.PatientName).startswith("UNKNOWN^M^")
        assert emergency.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT01"

        # Cancel it again (ordered twice by mistake): the modality no longer sees it.
        page.get_by_role("button", name="Cancel this step").click()
        expect(page.get_by_role("heading", name="Cancel this step?")).to_be_visible()
        page.get_by_label("Reason (optional)").fill("ordered twice")
        page.get_by_role("button", name="Cancel the step").click()
        expect(
            page.get_by_text("The step is canceled; modalities no longer see it.")
        ).to_be_visible()
        expect(page.get_by_role("button", name="Restore this step")).to_be_visible()
        screenshot(page, "item_canceled")
        assert sorted(worklist(port)) == ["ACC1"]
