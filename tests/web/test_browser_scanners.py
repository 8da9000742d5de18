"""A real browser tests as a scanner; a real C-FIND from that scanner gets the same items."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset

from mwl.dicom.preview import WorklistPreviewer
from mwl.dicom.scp import WorklistScp
from tests.browser import chromium, log_in, screenshot, serving
from tests.scu import c_find
from web import create_app

pytestmark = pytest.mark.browser

TODAY = dt.date.today()


def scanner_query() -> Dataset:
    """What the CT01 scanner asks: its own station, today, CT; the usual return keys."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledStationAETitle = "CT01"
    sps.ScheduledProcedureStepStartDate = TODAY.strftime("%Y%m%d")
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def test_test_as_this_scanner_matches_a_real_c_find(
    settings, reader_factory, user, password, add_order
):
    from playwright.sync_api import expect

    def at(hour: int) -> dt.datetime:
        return dt.datetime.combine(TODAY, dt.time(hour, 0))

    add_order("ACC-SCAN-1", at(9), patient_id="SYN-11", patient_name="Sample^Anna")
    add_order(
        "ACC-SCAN-2", at(10), patient_id="SYN-12", patient_name="Example^Bert", station="CT02"
    )
    add_order("ACC-SCAN-3", at(11), patient_id="SYN-13", patient_name="Test^Carla")
    app = create_app(
        settings,
        reader_factory,
        config={"TESTING": True},
        query_previewer=WorklistPreviewer(settings, reader_factory),
    )
    scp = WorklistScp(settings.replace(dicom_ae_title="MWLTEST"), reader_factory)
    with scp, serving(app) as base, chromium() as browser:
        port = scp.address[1]
        # The scanner queries once, so it shows in the query log.
        first, status = c_find(port, scanner_query(), calling_ae="CT01")
        assert status == 0x0000 and len(first) == 2

        page = browser.new_page(viewport={"width": 1360, "height": 900})
        log_in(page, base, user, password)
        page.get_by_role("link", name="Scanners").click()
        page.get_by_role("link", name="CT01: history and test").click()
        expect(page.get_by_role("heading", name="Scanner CT01")).to_be_visible()
        expect(page.get_by_label("Scheduled station AE title")).to_have_value("CT01")
        expect(page.get_by_label("SPS start date from")).to_have_value(TODAY.isoformat())
        expect(page.get_by_role("table", name="C-FIND queries of CT01")).to_contain_text(
            "Modality = CT"
        )
        screenshot(page, "scanner_history")
        page.get_by_role("button", name="Run the query").click()

        expect(page.get_by_role("heading", name="What CT01 would get")).to_be_visible()
        expect(page.locator("#outcome")).to_contain_text("Success")
        expect(page.locator("#outcome")).to_contain_text("2 items.")
        accession_cells = page.locator("table.preview tbody > tr > td:nth-child(4)")
        expect(accession_cells).to_have_text(["ACC-SCAN-1", "ACC-SCAN-3"])
        screenshot(page, "scanner_test")

        page.get_by_label("Accession number or patient ID").fill("ACC-SCAN-2")
        page.get_by_role("button", name="Explain").click()
        reasons = page.locator("ul.reasons li")
        expect(reasons).to_have_text(["Scheduled station AE title: asked CT01, the item has CT02."])
        failed_row = page.locator("table.verdicts tr.verdict-fail")
        expect(failed_row).to_have_count(1)
        expect(failed_row).to_contain_text("CT02")
        screenshot(page, "scanner_why")
        shown = accession_cells.all_inner_texts()

        # The same query as a real C-FIND from CT01 gets exactly what the page showed.
        again, status = c_find(port, scanner_query(), calling_ae="CT01")
    assert status == 0x0000
    assert [ds.AccessionNumber for ds in again] == shown == ["ACC-SCAN-1", "ACC-SCAN-3"]
