"""The day list in Debian's Chromium: rows above the fold, axe, keyboard bulk cancel, live update.

Screenshots land in tests/artifacts/ (ignored by git): daylist-<lang>-<width>.png,
daylist-bulk-confirm.png and daylist-live.png.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user
from mwl.store.models import RequestedProcedure
from tests.browser import REPO, chromium, screenshot, serving

pytestmark = pytest.mark.browser

DAY = dt.date(2026, 11, 21)
AXE = REPO / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"
LOGIN = {
    "en": ("User name", "Password", "Log in", "Log out"),
    "de": ("Benutzername", "Passwort", "Anmelden", "Abmelden"),
}
LOCALES = {"en": "en-GB", "de": "de-CH"}
NAMES = ("Sample^Anna", "Example^Bert^J", "Test^Carla", "Demo^Dieter", "Muster^Erika")
DESCRIPTIONS = ("CT thorax with contrast", "MR knee left", "CT head without contrast")


@pytest.fixture
def busy_day(add_order, session_factory: sessionmaker[Session], monkeypatch) -> None:
    """40 synthetic steps from 07:00 on, every 12 minutes, CT and MR; some STAT or urgent."""
    monkeypatch.setattr("web.worklist.local_today", lambda: DAY)
    for n in range(40):
        start = dt.datetime.combine(DAY, dt.time(7)) + dt.timedelta(minutes=12 * n)
        mr = n % 3 == 1
        add_order(
            f"ACC{n:04d}",
            start,
            patient_id=f"SYN-{n:04d}",
            patient_name=NAMES[n % len(NAMES)],
            birth_date=f"19{50 + n % 45:02d}0{1 + n % 9}1{n % 10}",
            sex="FM"[n % 2],
            modality="MR" if mr else "CT",
            station="MR_ROOM_2" if mr else "CT01",
            description=DESCRIPTIONS[n % len(DESCRIPTIONS)],
        )
    with session_factory.begin() as session:
        for accession, priority in (("ACC0003", "STAT"), ("ACC0007", "HIGH")):
            session.execute(
                update(RequestedProcedure)
                .where(RequestedProcedure.accession_number == accession)
                .values(requested_procedure_priority=priority)
            )


@pytest.fixture
def editor(session_factory: sessionmaker[Session], password: str) -> str:
    with session_factory.begin() as session:
        add_user(session, "erin", password, "editor")
    return "erin"


def log_in(page: Any, base: str, lang: str, username: str, password: str, path: str) -> None:
    from playwright.sync_api import expect

    name, secret, button, logout = LOGIN[lang]
    page.goto(f"{base}/login?next={path}")
    page.get_by_label(name).fill(username)
    page.get_by_label(secret).fill(password)
    page.get_by_role("button", name=button).click()
    expect(page.get_by_role("button", name=logout)).to_be_visible()


def rows_in_viewport(page: Any) -> int:
    """Body rows of the day list whose whole box lies inside the viewport."""
    return int(
        page.evaluate(
            """() => {
              const h = window.innerHeight, w = window.innerWidth;
              return [...document.querySelectorAll('table.worklist tbody tr')].filter(r => {
                const b = r.getBoundingClientRect();
                return b.top >= 0 && b.bottom <= h && b.left >= 0 && b.top < h;
              }).length;
            }"""
        )
    )


def serious_axe_violations(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document)")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("lang", ["en", "de"])
def test_rows_fit_the_screen_and_axe_finds_nothing_serious(
    csrf_app, user, password, busy_day, lang
):
    if not AXE.exists():
        pytest.skip("axe-core is not installed: npm ci --prefix tests/node")
    with serving(csrf_app) as base, chromium() as browser:
        for width, height in ((1366, 768), (390, 844)):
            # bypass_csp lets the test inject axe; the page itself runs under the CSP.
            context = browser.new_context(
                viewport={"width": width, "height": height}, locale=LOCALES[lang], bypass_csp=True
            )
            page = context.new_page()
            log_in(page, base, lang, user, password, "/")
            assert (page.locator("html").get_attribute("lang") or "").split("-")[0] == lang
            page.screenshot(path=str(screenshot(page, f"daylist-{lang}-{width}")).replace(
                ".png", "-viewport.png"))  # fmt: skip
            if width == 1366:
                visible = rows_in_viewport(page)
                assert visible >= 15, f"{visible} rows visible in {lang} at {width}x{height}"
                # The STAT step reads as such in words, not by colour alone.
                stat = page.locator("tr", has_text="ACC0003").locator(".priority")
                assert stat.inner_text() == ("STAT" if lang == "en" else "NOTFALL")
            violations = serious_axe_violations(page)
            assert not violations, json.dumps(violations, indent=1)
            context.close()


def _tab_to(page: Any, selector: str, backwards: bool = False, limit: int = 150) -> None:
    """Press Tab (or Shift+Tab) until the element matching ``selector`` has the focus."""
    key = "Shift+Tab" if backwards else "Tab"
    for _ in range(limit):
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
        page.keyboard.press(key)
    raise AssertionError(f"{selector} never got the keyboard focus")


def test_keyboard_only_select_a_row_and_bulk_cancel_with_confirmation(
    csrf_app, editor, password, busy_day
):
    from playwright.sync_api import expect

    with serving(csrf_app) as base, chromium() as browser:
        context = browser.new_context(viewport={"width": 1366, "height": 768}, bypass_csp=True)
        page = context.new_page()
        log_in(page, base, "en", editor, password, "/")
        # The editor's list has a tick box per row and the bulk form: still 15 rows.
        assert rows_in_viewport(page) >= 15
        if AXE.exists():  # the editor's page: tick boxes and the bulk form
            assert not serious_axe_violations(page)
            page.reload()
        row = page.locator("tr", has_text="ACC0002")
        box = row.locator('input[name="step"]')
        _tab_to(page, f"#{box.get_attribute('id')}")
        page.keyboard.press("Space")
        expect(box).to_be_checked()
        _tab_to(page, "#bulk-action", backwards=True)
        expect(page.locator("#bulk-action")).to_have_value("cancel")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Confirm: Cancel")).to_be_visible()
        expect(page.get_by_role("row").filter(has_text="SYN-0002")).to_be_visible()
        screenshot(page, "daylist-bulk-confirm")
        if AXE.exists():
            assert not serious_axe_violations(page)
        _tab_to(page, "#reason")
        page.keyboard.type("scanner down")
        _tab_to(page, "button.danger")
        page.keyboard.press("Enter")
        expect(page.get_by_text("Cancel: 1 step changed.")).to_be_visible()
        expect(page.locator("tr", has_text="ACC0002").locator(".status")).to_have_text("Canceled")
        expect(page.locator("tr", has_text="ACC0001").locator(".status")).to_have_text("Scheduled")
        page.goto(f"{base}/worklist/print?station=CT01")
        expect(page.get_by_role("heading", name="Downtime list CT01")).to_be_visible()
        expect(page.get_by_role("navigation")).to_have_count(0)
        screenshot(page, "daylist-print")
        if AXE.exists():
            assert not serious_axe_violations(page)


def test_a_new_order_appears_keeping_search_text_scroll_and_selection(
    csrf_app, editor, password, busy_day, add_order, monkeypatch
):
    from playwright.sync_api import expect

    monkeypatch.setattr("web.worklist.POLL_SECONDS", 1)
    with serving(csrf_app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        log_in(page, base, "en", editor, password, "/")
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.locator("tr", has_text="ACC0030").locator('input[name="step"]').check()
        page.get_by_label("Search").fill("half-typed")
        page.evaluate("window.scrollTo(0, 300)")
        scrolled = page.evaluate("window.scrollY")
        assert scrolled > 0

        # A new order through the core, as the HL7 listener stores one.
        add_order("ACC-NEW", dt.datetime.combine(DAY, dt.time(6, 30)), patient_id="SYN-NEW")

        expect(page.locator("tr", has_text="ACC-NEW")).to_have_count(1, timeout=15_000)
        expect(page.locator("#live-status")).to_have_text(
            "The list was updated: 41 steps.", timeout=5_000
        )
        assert page.get_by_label("Search").input_value() == "half-typed"
        assert page.evaluate("window.scrollY") == scrolled
        expect(page.locator("tr", has_text="ACC0030").locator('input[name="step"]')).to_be_checked()
        assert "http-equiv" not in page.content()
        assert any("/worklist/changes?" in url and "since=" in url for url in requests)
        screenshot(page, "daylist-live")
