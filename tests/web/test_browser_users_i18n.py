"""Chromium on the users page and in German: dates as de-CH/de-DE write them, a switch that
keeps the page, and user management by an admin, with axe-core finding nothing serious."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import find_user
from tests.browser import REPO, chromium, log_in, screenshot, serving
from tests.settings_page import PASSWORD, add_account

pytestmark = pytest.mark.browser

AXE = REPO / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"
DAY = dt.date(2026, 11, 21)


def axe_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations of the page (WCAG 2.1 A and AA rules)."""
    if not AXE.exists():
        pytest.skip("axe-core is not installed (npm ci --prefix tests/node)")
    # Added by the test harness, not the page: the page's CSP allows no script, so
    # Playwright's evaluate (which CSP does not govern) injects it.
    page.evaluate(Path(AXE).read_text(encoding="utf-8"))
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21aa']});
            return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))
                .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '));
        }"""
    )
    return list(result)


def _german_login(page: Any, base: str, username: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/login")
    page.get_by_label("Benutzername").fill(username)
    page.get_by_label("Passwort").fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    expect(page.get_by_role("button", name="Abmelden")).to_be_visible()


@pytest.mark.parametrize("locale", ["de-CH", "de-DE"])
def test_german_pages_show_german_dates(csrf_app, session_factory, add_order, locale) -> None:
    from playwright.sync_api import expect

    add_account(session_factory, "root", "admin")
    add_order("ACC1", dt.datetime.combine(DAY, dt.time(7, 45)), birth_date="19640312")
    with serving(csrf_app) as base, chromium() as browser:
        page = browser.new_context(locale=locale).new_page()
        _german_login(page, base, "root")
        page.goto(f"{base}/?date={DAY.isoformat()}")
        expect(page.locator("h1")).to_contain_text("Samstag, 21. November 2026")
        expect(page.locator("table")).to_contain_text("12.03.1964")
        expect(page.locator("table")).to_contain_text("07:45")
        page.get_by_role("link", name="Doe, Jane").first.click()
        expect(page.locator("main")).to_contain_text("21.11.2026, 07:45")
        assert "2026-11-21" not in page.locator("main").inner_text()
        page.goto(f"{base}/admin/users")
        created = find_created(session_factory, "root")
        expect(page.locator("table.users")).to_contain_text(created)
        assert page.locator("html").get_attribute("lang") == (
            "de-CH" if locale == "de-CH" else "de"
        )
        screenshot(page, f"users-{locale}")


def find_created(session_factory: sessionmaker[Session], name: str) -> str:
    with session_factory() as session:
        user = find_user(session, name)
        assert user is not None
        local = user.created_at.replace(tzinfo=dt.UTC).astimezone()
    return local.strftime("%d.%m.%Y")


def test_the_language_switch_keeps_the_page_and_its_query(csrf_app, session_factory) -> None:
    from playwright.sync_api import expect

    add_account(session_factory, "root", "admin")
    with serving(csrf_app) as base, chromium() as browser:
        context = browser.new_context(locale="en-US")
        page = context.new_page()
        log_in(page, base, "root", PASSWORD)
        url = f"{base}/?date={DAY.isoformat()}&modality=CT&q=doe"
        page.goto(url)
        page.get_by_label("Language").select_option("de-CH")
        page.get_by_role("button", name="Switch").click()
        expect(page.get_by_role("button", name="Abmelden")).to_be_visible()
        assert page.url == url
        assert page.locator("html").get_attribute("lang") == "de-CH"
        expect(page.locator("h1")).to_contain_text("21. November 2026")

        # Remembered: in a cookie that outlives the session (here: after logging out).
        page.get_by_role("button", name="Abmelden").click()
        expect(page.get_by_role("heading", name="Anmelden")).to_be_visible()
        cookie = {c["name"]: c for c in context.cookies()}["mwl_lang"]
        assert cookie["value"] == "de-CH" and cookie["expires"] > dt.datetime.now().timestamp()
        fresh = browser.new_context(locale="en-US")
        fresh.add_cookies([cookie])
        again = fresh.new_page()
        again.goto(f"{base}/login")
        expect(again.get_by_role("heading", name="Anmelden")).to_be_visible()

        # A page shown after a POST (a form with errors) switches back to its address.
        log_in_german = again
        log_in_german.get_by_label("Sprache").select_option("en")
        log_in_german.get_by_role("button", name="Wechseln").click()
        expect(log_in_german.get_by_role("heading", name="Log in")).to_be_visible()
        assert log_in_german.url == f"{base}/login"


def test_admin_manages_users_in_the_browser(csrf_app, session_factory) -> None:
    from playwright.sync_api import expect

    add_account(session_factory, "root", "admin")
    add_account(session_factory, "alice", "viewer")
    with serving(csrf_app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if "Refused" in m.text else None)
        log_in(page, base, "root", PASSWORD)
        page.get_by_role("link", name="Users").click()
        expect(page.get_by_role("heading", name="Users", exact=True)).to_be_visible()
        assert axe_violations(page) == []

        # Create: errors all at once, then the account.
        form = page.locator("form.user-create")
        form.get_by_label("User name").fill("bob")
        form.get_by_label("Role").select_option("editor")
        form.get_by_label("Password", exact=True).fill("short")
        form.get_by_label("Password again").fill("other")
        form.get_by_role("button", name="Create user").click()
        expect(form.locator(".field-error")).to_have_count(2)  # too short; not the same
        expect(form.get_by_label("User name")).to_have_value("bob")
        assert axe_violations(page) == []
        screenshot(page, "users-form-errors")
        passphrase = "a first long passphrase"
        form.get_by_label("Password", exact=True).fill(passphrase)
        form.get_by_label("Password again").fill(passphrase)
        form.get_by_role("button", name="Create user").click()
        expect(page.get_by_role("status")).to_contain_text("User bob created.")
        bob = page.locator("tr", has=page.get_by_role("rowheader", name="bob"))
        expect(bob).to_contain_text("must change the password")

        # Role: lowering is confirmed.
        bob.get_by_label("Role of bob").select_option("viewer")
        bob.get_by_role("button", name="Change role").click()
        expect(page.get_by_role("heading", name="Please confirm")).to_be_visible()
        expect(page.locator("main")).to_contain_text("from editor to viewer")
        assert axe_violations(page) == []
        page.get_by_role("button", name="Yes, go on").click()
        expect(page.get_by_role("status")).to_contain_text("bob now has the role viewer.")

        # Disable: confirmed; "No" changes nothing.
        alice = page.locator("tr", has=page.get_by_role("rowheader", name="alice"))
        alice.get_by_role("button", name="Disable alice").click()
        page.get_by_role("link", name="No, back to the users").click()
        expect(alice).to_contain_text("active")
        alice.get_by_role("button", name="Disable alice").click()
        page.get_by_role("button", name="Yes, go on").click()
        expect(page.get_by_role("status")).to_contain_text("The account alice is disabled.")
        expect(alice.get_by_role("button", name="Enable alice")).to_be_visible()

        # Reset a password: the policy's message, then the new one.
        alice.get_by_text("Reset password of alice").click()
        alice.get_by_label("Password", exact=True).fill("alice")
        alice.get_by_label("Password again").fill("alice")
        alice.get_by_role("button", name="Set new password").click()
        expect(alice.locator(".field-error")).to_contain_text("Use at least 15 characters.")
        alice.get_by_label("Password", exact=True).fill("her brand new passphrase")
        alice.get_by_label("Password again").fill("her brand new passphrase")
        alice.get_by_role("button", name="Set new password").click()
        expect(page.get_by_role("status")).to_contain_text("New password set for alice")
        assert axe_violations(page) == []
        screenshot(page, "users")
        assert problems == []

    with session_factory() as session:
        states = {
            name: (u.role, u.disabled, u.must_change_password)
            for name in ("bob", "alice")
            if (u := find_user(session, name)) is not None
        }
    assert states == {"bob": ("viewer", False, True), "alice": ("viewer", True, True)}
    print(json.dumps(states))
