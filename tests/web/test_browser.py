"""A real browser against the app as mwl serve runs it: log in, see the day list, screenshot."""

from __future__ import annotations

import datetime as dt

import pytest

from mwl.domain import Code
from tests.browser import ARTIFACTS, chromium, screenshot, serving

# The README's screenshots are taken by tools/screenshots.py, so test runs leave the
# work tree clean.
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


def test_log_in_see_and_filter_the_day_list(
    csrf_app, user, password, day_orders, database_url, monkeypatch
):
    from playwright.sync_api import expect

    # The synthetic morning is "today": the page shows its refresh line, as on a console.
    monkeypatch.setattr("web.worklist.local_today", lambda: DAY)
    with serving(csrf_app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 640})
        page.goto(f"{base}/?modality=CT")
        expect(page).to_have_url(f"{base}/login?next=%2F%3Fmodality%3DCT")
        expect(page.get_by_text("Sample")).to_have_count(0)  # no data before login

        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{base}/?modality=CT")
        expect(page.get_by_role("row")).to_have_count(3)  # header, two CT steps
        # The skip link is the first stop of the keyboard, and shows when focused.
        page.keyboard.press("Tab")
        skip = page.get_by_role("link", name="Skip to content")
        expect(skip).to_be_focused()
        box = skip.bounding_box()
        assert box is not None and box["x"] >= 0 and box["y"] >= 0
        page.keyboard.press("Enter")
        expect(page).to_have_url(f"{base}/?modality=CT#main")
        page.get_by_role("link", name="Clear filters").click()
        expect(page).to_have_url(f"{base}/")

        row = page.get_by_role("row").filter(has_text="SYN-0001")
        expect(row).to_contain_text("Sample, Anna")
        expect(row).to_contain_text("7:45")  # 7:45 AM (en), 07:45 (en-GB, de)
        expect(row).to_contain_text("ACC20261121A")
        expect(row).to_contain_text("Scheduled")
        expect(page.get_by_role("row").filter(has_text="SYN-0003")).to_contain_text("Canceled")
        expect(page.get_by_role("row").filter(has_text="SYN-0004")).to_contain_text("Started")
        expect(page.get_by_text("4 scheduled procedure steps")).to_be_visible()
        expect(page.get_by_text("this list updates itself")).to_be_visible()

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "daylist.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # Free text: a name without its accent finds the patient.
        page.get_by_label("Search").fill("example")
        page.get_by_label("Search").press("Enter")
        expect(page).to_have_url(f"{base}/?q=example")
        expect(page.get_by_role("row")).to_have_count(2)
        expect(page.get_by_role("row").nth(1)).to_contain_text("Example, Bert J")
        expect(page.get_by_role("link", name="Remove filter Search: example")).to_be_visible()
        page.get_by_role("link", name="Clear filters").click()

        # The counts per modality set the modality filter; the status select narrows it.
        counts = page.get_by_role("navigation", name="Steps per modality")
        counts.get_by_role("link", name="MR").click()
        expect(page).to_have_url(f"{base}/?modality=MR")
        expect(page.get_by_role("row")).to_have_count(3)
        expect(counts.get_by_role("link", name="MR")).to_have_attribute("aria-current", "true")
        page.get_by_label("Status").select_option("started")
        page.get_by_role("button", name="Show").click()
        expect(page).to_have_url(f"{base}/?modality=MR&status=started")
        expect(page.get_by_role("row")).to_have_count(2)
        expect(page.get_by_role("row").nth(1)).to_contain_text("SYN-0004")
        screenshot(page, "daylist-filtered")

        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(f"{base}/login")
        page.goto(f"{base}/?date={DAY.isoformat()}")
        expect(page.get_by_text("SYN-0001")).to_have_count(0)
