"""A real browser on the settings pages: add a trusted AE by keyboard, reset it, no CSP errors."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import apply_overrides, load_overrides
from mwl.config import Settings
from tests.browser import chromium, log_in, screenshot, serving
from tests.settings_page import PASSWORD, add_account

pytestmark = pytest.mark.browser


def test_admin_adds_a_trusted_ae_and_resets_the_switch(
    csrf_app, settings: Settings, session_factory: sessionmaker[Session], reader_factory
) -> None:
    from playwright.sync_api import expect

    add_account(session_factory, "root", "admin")
    with serving(csrf_app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 800})
        problems: list[str] = []
        # Anything the Content-Security-Policy blocked, and any failed request but the icon.
        page.on("console", lambda m: problems.append(m.text) if "Refused" in m.text else None)
        page.on(
            "response",
            lambda r: (
                problems.append(f"{r.status} {r.url}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico")
                else None
            ),
        )
        log_in(page, base, "root", PASSWORD)

        page.get_by_role("link", name="Settings").click()
        expect(page.get_by_role("heading", name="Settings in force")).to_be_visible()
        page.get_by_role("link", name="Trusted AEs and profiles").click()

        page.get_by_label("Only AEs with a profile may connect").check()
        page.get_by_label("SCHEDULED").check()
        page.get_by_label("Date window (days)").fill("2")
        title = page.get_by_label("Calling AE title")
        title.fill("CT01")
        # Enter in a field saves the form (the reset buttons belong to other forms).
        title.press("Enter")
        expect(page.get_by_role("status")).to_contain_text(
            "Saved: dicom_ae_profiles, dicom_restrict_calling_ae."
        )
        expect(page.get_by_role("group", name="Profile 1: CT01")).to_be_visible()
        screenshot(page, "admin-aes")

        with reader_factory() as session:
            now = apply_overrides(settings, load_overrides(session))
        assert now.dicom_restrict_calling_ae
        (profile,) = now.dicom_ae_profiles
        assert (profile.ae_title, profile.date_window_days) == ("CT01", 2)
        assert profile.visible_statuses == ("SCHEDULED",)

        page.get_by_role("button", name="Reset to the file/environment value").first.click()
        expect(page.get_by_role("status")).to_contain_text(
            "dicom_restrict_calling_ae uses the file or environment value again."
        )
        expect(page.get_by_label("Only AEs with a profile may connect")).not_to_be_checked()

        page.get_by_role("link", name="HL7 mapping and routing").click()
        expect(page.get_by_label("Value sent, row 1")).to_have_value("MRI")
        screenshot(page, "admin-hl7")
        page.get_by_role("link", name="Settings in force").click()
        row = page.get_by_role("row").filter(has_text="dicom_ae_profiles")
        expect(row).to_contain_text("Settings page")
        screenshot(page, "admin-index")
        assert not problems, problems
