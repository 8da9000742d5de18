"""A real browser against the app on waitress: log in, see the day list, keep a screenshot."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import pytest

from mwl.domain import Code
from tests.browser import ARTIFACTS, REPO, chromium, serving

# The README's screenshot is refreshed only on request, so test runs leave the
# work tree clean: MWL_UPDATE_SCREENSHOTS=1 pytest -m browser tests/web
DOCS_IMAGE = REPO / "docs" / "img" / "daylist.png"
DAY = dt.date(2026, 11, 21)

pytestmark = pytest.mark.browser


@pytest.fixture
def day_orders(add_order) -> None:
    """A synthetic morning of one CT and one MR room; one order canceled."""

    def at(hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime.combine(DAY, dt.time(hour, minute))

    add_order(
        "ACC20261121A",
        at(7, 45),
        patient_id="SYN-0001",
        patient_name="Sample^Anna",
        birth_date="19640312",
        sex="F",
        description="CT thorax with contrast",
        protocol=(Code("CTTHX", "99SYN", "Thorax contrast"),),
    )
    add_order(
        "ACC20261121B",
        at(8, 30),
        patient_id="SYN-0002",
        patient_name="Example^Bert^J",
        birth_date="19811105",
        sex="M",
        modality="MR",
        station="MR_ROOM_2",
        description="MR knee left",
    )
    add_order(
        "ACC20261121C",
        at(9, 15),
        patient_id="SYN-0003",
        patient_name="Test^Carla",
        birth_date="19920730",
        sex="F",
        description="CT head without contrast",
    )
    add_order(
        "ACC20261121C",
        at(9, 15),
        patient_id="SYN-0003",
        patient_name="Test^Carla",
        birth_date="19920730",
        sex="F",
        description="CT head without contrast",
        control="CA",
        order_status="CA",
    )
    add_order(
        "ACC20261121D",
        at(10, 0),
        patient_id="SYN-0004",
        patient_name="Demo^Dieter",
        birth_date="19550101",
        sex="M",
        modality="MR",
        station="MR_ROOM_2",
        description="MR lumbar spine",
        control="XO",
        order_status="IP",
    )


def test_log_in_and_see_the_day_list(csrf_app, user, password, day_orders, database_url):
    from playwright.sync_api import expect

    with serving(csrf_app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 640})
        page.goto(f"{base}/?date={DAY.isoformat()}")
        expect(page).to_have_url(f"{base}/login?next=%2F%3Fdate%3D{DAY.isoformat()}")
        expect(page.get_by_text("Sample")).to_have_count(0)  # no data before login

        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()

        expect(page).to_have_url(f"{base}/?date={DAY.isoformat()}")
        row = page.get_by_role("row").filter(has_text="SYN-0001")
        expect(row).to_contain_text("Sample, Anna")
        expect(row).to_contain_text("07:45")
        expect(row).to_contain_text("ACC20261121A")
        expect(row).to_contain_text("Scheduled")
        expect(page.get_by_role("row").filter(has_text="SYN-0003")).to_contain_text("Canceled")
        expect(page.get_by_text("4 scheduled procedure steps")).to_be_visible()

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "daylist.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        update_docs = os.environ.get("MWL_UPDATE_SCREENSHOTS") == "1"
        if update_docs and database_url.startswith("sqlite"):
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, DOCS_IMAGE)

        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(f"{base}/login")
        page.goto(f"{base}/?date={DAY.isoformat()}")
        expect(page.get_by_text("SYN-0001")).to_have_count(0)
