"""In Chromium, English and German: the item page layout, axe, keyboard, forms, re-processing.

Screenshots for review land in tests/artifacts/: ``itempage-<lang>-<width>.png`` (the
item page), ``item_edit_errors-<lang>.png`` and ``order_new_errors-<lang>.png`` (forms
with several errors), ``reprocess_preview.png``.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import apply_overrides, load_overrides
from mwl.admin.users import add_user
from mwl.config import Settings
from mwl.dicom.listing import item_attributes
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.describe import describe_message
from mwl.hl7.reprocess import ChainRunner
from mwl.hl7.server import Hl7Server
from mwl.store.engine import make_session_factory
from mwl.store.models import Hl7Message, RequestedProcedure, ScheduledProcedureStep
from tests.browser import axe_violations, chromium, screenshot, serving
from tests.hl7.conftest import sample
from web import create_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,  # an HL7 listener receives the orders
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

PASSWORD = "correct horse battery staple"
START = dt.datetime.combine(dt.date.today() + dt.timedelta(days=1), dt.time(9, 30))
VIEWPORTS = {"desktop": (1366, 768), "phone": (390, 844)}
LOCALES = {"en": "en-GB", "de": "de-DE"}
# Upper bounds of the item page's height, in CSS pixels (the DICOM listing folded).
MAX_HEIGHT = {"desktop": 3000, "phone": 6000}


def live_settings(settings: Settings, readers: sessionmaker[Session]) -> Callable[[], Settings]:
    """The settings with the page's values, as LiveSettings gives the services."""

    def current() -> Settings:
        with readers() as session:
            return apply_overrides(settings, load_overrides(session))

    return current


def make_app(settings: Settings, readers: sessionmaker[Session], engine: Any) -> Flask:
    writers = make_session_factory(engine, writer=True)
    return create_app(
        settings,
        readers,
        writer_factory=writers,
        config={"TESTING": True},  # CSRF on, as in production
        item_lister=functools.partial(item_attributes, settings=settings),
        hl7_describer=describe_message,
        chain_reprocessor=ChainRunner(live_settings(settings, readers), writers),
    )


@contextmanager
def browser_page(browser: Any, base: str, lang: str, viewport: str, user: str) -> Iterator[Any]:
    width, height = VIEWPORTS[viewport]
    context = browser.new_context(viewport={"width": width, "height": height}, locale=LOCALES[lang])
    page = context.new_page()
    page.goto(f"{base}/login")
    page.locator("#username").fill(user)
    page.locator("#password").fill(PASSWORD)
    page.locator("#password").press("Enter")
    page.wait_for_url(re.compile(r".*/(\?.*)?$"))
    try:
        yield page
    finally:
        context.close()


def accounts(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as session:
        add_user(session, "erin", PASSWORD, "editor")
        add_user(session, "root", PASSWORD, "admin")


def send_over_mllp(settings: Settings, session_factory: sessionmaker[Session], raw: bytes) -> None:
    with Hl7Server(settings, session_factory) as server:
        (ack,) = send_messages(*server.address, [raw], timeout=10)
    assert ack_summary(ack)[0] == "AA"


def keys(session_factory: sessionmaker[Session], accession: str) -> tuple[int, int]:
    """(step key, key of the first logged message) of an order."""
    with session_factory() as session:
        step = session.scalars(
            select(ScheduledProcedureStep.id)
            .join(RequestedProcedure)
            .where(RequestedProcedure.accession_number == accession)
        ).one()
        message = session.scalars(select(Hl7Message.id).order_by(Hl7Message.id)).first()
    return step, message or 0


def layout(page: Any) -> dict[str, float]:
    return page.evaluate(
        """() => {
            const widths = s => [...document.querySelectorAll(s)]
                .map(e => e.getBoundingClientRect().width).filter(w => w > 0);
            return {
                height: document.documentElement.scrollHeight,
                width: document.documentElement.scrollWidth,
                section: Math.min(...widths('.item-facts > section')),
                value: Math.min(...widths('.item-facts dl.facts dd')),
            };
        }"""
    )


@pytest.mark.parametrize("lang", ["en", "de"])
def test_item_page_layout_and_axe_in_both_languages(
    lang, settings, reader_factory, session_factory, engine
) -> None:
    accounts(session_factory)
    # A real order over MLLP, without a station (the sample names none): the warning shows.
    send_over_mllp(settings, session_factory, sample("orm_o01_nw_details.hl7"))
    with session_factory() as session:
        step = session.scalars(select(ScheduledProcedureStep.id)).first()
        message = session.scalars(select(Hl7Message.id)).first()
    app = make_app(settings, reader_factory, engine)
    with serving(app) as base, chromium() as browser:
        for viewport, (width, _height) in VIEWPORTS.items():
            with browser_page(browser, base, lang, viewport, "erin") as page:
                page.goto(f"{base}/items/{step}")
                assert page.locator("html").get_attribute("lang") == lang
                measured = layout(page)
                shot = screenshot(page, f"itempage-{lang}-{width}")
                where = (lang, viewport, measured, str(shot))
                assert measured["width"] <= width, where  # no sideways scrolling
                assert measured["section"] >= 200, where
                assert measured["value"] >= 200, where  # no value column squeezed
                assert measured["height"] <= MAX_HEIGHT[viewport], where
        with browser_page(browser, base, lang, "desktop", "erin") as page:
            for path in (
                f"/items/{step}",
                f"/items/{step}/edit",
                "/orders/new",
                f"/messages/{message}",
                f"/messages/{message}/rerun",
            ):
                page.goto(f"{base}{path}")
                assert axe_violations(page) == [], (lang, path)
            page.goto(f"{base}/items/{step}")
            page.locator("form[action$='/cancel'] button").click()
            assert axe_violations(page) == [], (lang, "cancel confirmation")


def focus(page: Any, selector: str, limit: int = 80) -> None:
    """Press Tab until the element matching ``selector`` has the focus (keyboard only)."""
    for _ in range(limit):
        if page.evaluate("s => document.activeElement?.matches(s) ?? false", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def test_keyboard_only_from_login_to_a_confirmed_cancel_and_its_undo(
    settings, reader_factory, session_factory, engine, add_order
) -> None:
    from playwright.sync_api import expect

    accounts(session_factory)
    add_order("ACC1", START, patient_name="Doe^Jane", station="CT01")
    step, _message = keys(session_factory, "ACC1")
    app = make_app(settings, reader_factory, engine)
    with serving(app) as base, chromium() as browser:
        context = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-GB")
        page = context.new_page()
        page.goto(f"{base}/login")
        focus(page, "#username")
        page.keyboard.type("erin")
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        page.goto(f"{base}/?date={START.date().isoformat()}")
        focus(page, f"a[href='/items/{step}']")
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", level=1)).to_contain_text("Doe, Jane")
        focus(page, "form[action$='/cancel'] button")
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Cancel this step?")).to_be_visible()
        # The reason field has the focus on the confirmation page.
        page.keyboard.type("ordered twice")
        focus(page, "section.confirm button[type=submit]")
        page.keyboard.press("Enter")
        expect(
            page.get_by_text("The step is canceled; modalities no longer see it.")
        ).to_be_visible()
        expect(page.locator(".item-status .status")).to_have_text("Canceled")
        focus(page, "form.undo button")
        page.keyboard.press("Enter")
        expect(page.get_by_text("The step is restored.")).to_be_visible()
        expect(page.locator(".item-status .status")).to_have_text("Scheduled")
        trail = page.locator("table.trail")
        expect(trail).to_contain_text("ordered twice")
        expect(trail).to_contain_text("Scheduled → Canceled")
        context.close()


ERRORS = {
    "en": {
        "patient_birth_date": "Not a calendar date",
        "patient_name": "The characters ^, = and \\ are not allowed in a name part.",
        "start": "This is required.",
        "scheduled_station_ae_title": "The backslash",
    },
    "de": {
        "patient_birth_date": "Kein Kalenderdatum",
        "patient_name": "nicht erlaubt",
        "start": None,  # checked for being there, worded by the i18n catalog
        "scheduled_station_ae_title": "Backslash",
    },
}


@pytest.mark.parametrize("lang", ["en", "de"])
def test_forms_show_every_error_at_once_and_keep_what_was_typed(
    lang, settings, reader_factory, session_factory, engine, add_order
) -> None:
    from playwright.sync_api import expect

    accounts(session_factory)
    add_order("ACC1", START, patient_name="Doe^Jane", station="CT01")
    step, _message = keys(session_factory, "ACC1")
    app = make_app(settings, reader_factory, engine)
    with serving(app) as base, chromium() as browser:
        with browser_page(browser, base, lang, "desktop", "erin") as page:
            page.goto(f"{base}/items/{step}/edit")
            page.locator("#name_given").fill("Ja^ne")
            page.locator("#patient_birth_date").fill("31.02.1980")
            page.locator("#start").fill("")
            page.locator("#scheduled_station_ae_title").fill("CT\\01")
            page.locator("form.edit button[type=submit]").click()
            summary = page.get_by_role("alert")
            expect(summary).to_be_visible()
            for name, text in ERRORS[lang].items():
                error = page.locator(f"#{name}-error")
                expect(error).to_be_visible()
                if text:
                    expect(error).to_contain_text(text)
            assert summary.locator("li").count() == len(ERRORS[lang])
            # Each input names its error (aria-describedby) and is marked invalid.
            for name in ("patient_birth_date", "start", "scheduled_station_ae_title"):
                field = page.locator(f"#{name}")
                assert f"{name}-error" in (field.get_attribute("aria-describedby") or "")
                assert field.get_attribute("aria-invalid") == "true"
            # What was typed comes back as typed, the invalid date too.
            expect(page.locator("#patient_birth_date")).to_have_value("31.02.1980")
            expect(page.locator("#name_given")).to_have_value("Ja^ne")
            expect(page.locator("#scheduled_station_ae_title")).to_have_value("CT\\01")
            screenshot(page, f"item_edit_errors-{lang}")
            assert axe_violations(page) == [], lang

            page.goto(f"{base}/orders/new")
            page.locator("#patient_id").fill("PAT9")
            page.locator("#patient_birth_date").fill("2999-01-01")
            page.locator("#scheduled_station_ae_title").fill("CT\\01")
            page.locator("#modality").fill("")
            page.locator("form.edit button[type=submit]").click()
            expect(page.get_by_role("alert")).to_be_visible()
            for name in ("patient_birth_date", "scheduled_station_ae_title", "modality"):
                expect(page.locator(f"#{name}-error")).to_be_visible()
            expect(page.locator("#patient_birth_date")).to_have_value("2999-01-01")
            expect(page.locator("#patient_id")).to_have_value("PAT9")
            screenshot(page, f"order_new_errors-{lang}")
            assert axe_violations(page) == [], lang
    with session_factory() as session:
        assert session.scalars(select(ScheduledProcedureStep.scheduled_station_ae_title)).all() == [
            "CT01"
        ]


def test_a_station_rule_then_reprocess_preview_and_apply(
    settings, reader_factory, session_factory, engine
) -> None:
    from playwright.sync_api import expect

    accounts(session_factory)
    send_over_mllp(settings, session_factory, sample("orm_o01_nw.hl7"))
    step, message = keys(session_factory, "ACC0001")
    app = make_app(settings, reader_factory, engine)
    with serving(app) as base, chromium() as browser:
        with browser_page(browser, base, "en", "desktop", "root") as page:
            page.goto(f"{base}/items/{step}")
            expect(page.locator("#no-station")).to_contain_text("No scheduled station AE title.")
            page.goto(f"{base}/admin")
            banner = page.locator("#station-rules-banner")
            expect(banner).to_be_visible()
            banner.get_by_role("link").click()
            page.get_by_label("CT", exact=True).fill("CT01")
            page.get_by_role("button", name="Save station rules").click()
            expect(page.get_by_role("status")).to_contain_text("1 station rule(s) saved.")
            page.goto(f"{base}/admin")
            expect(page.locator("#station-rules-banner")).to_have_count(0)

            # The order came before the rule: re-process it, preview first.
            page.goto(f"{base}/items/{step}")
            page.get_by_role("link", name="Re-process…").click()
            expect(page.get_by_role("heading", level=1)).to_contain_text("Re-process: preview")
            diff = page.locator("table.diff")
            expect(diff.get_by_role("row").filter(has_text="Station AE title")).to_contain_text(
                "CT01"
            )
            screenshot(page, "reprocess_preview")
            assert axe_violations(page) == []
            assert keys(session_factory, "ACC0001")[0] == step
            with session_factory() as session:
                station = session.get(ScheduledProcedureStep, step).scheduled_station_ae_title
            assert station == ""  # the preview stored nothing
            page.get_by_role("button", name="Re-process 1 message").click()
            expect(page.get_by_role("status")).to_contain_text("1 message re-processed")
            page.goto(f"{base}/items/{step}")
            expect(page.locator("#no-station")).to_have_count(0)
            expect(page.locator(".item-facts")).to_contain_text("CT01")
    with session_factory() as session:
        assert session.get(ScheduledProcedureStep, step).scheduled_station_ae_title == "CT01"
        assert message
