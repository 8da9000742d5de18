"""Chromium over every page: axe-core finds nothing serious, and device warnings show.

One admin session walks every GET route of the app as mwl.cli wires it (English and
German), with rows of every kind present, and runs axe-core on each page. A station
whose AE profile declares a device limit shows its warning on the day list row and
the item page, and the watchdog's alerts show above the day list.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re

import pytest
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user
from mwl.config import DicomAeProfile, Settings
from mwl.dicom.dicomweb import DicomWebService
from mwl.dicom.listing import item_attributes
from mwl.dicom.preview import WorklistPreviewer
from mwl.hl7.describe import describe_message
from mwl.hl7.reprocess import ChainRunner, reprocess_message
from mwl.orders.apply import apply_order
from mwl.store.models import WatchdogAlert, utcnow
from tests.browser import axe_violations, chromium, log_in, screenshot, serving
from tests.factories import one_step_order
from web import create_app

# Every page twice, in Chromium: CI runs it in the sweep after the default run.
pytestmark = [pytest.mark.browser, pytest.mark.sweep]

PASSWORD = "correct horse battery staple"
TODAY = dt.date.today()


@pytest.fixture
def database_url(tmp_path):  # type: ignore[no-untyped-def]
    # The pages, not the database, are under test here: SQLite only.
    from tests.databases import migrated_database_url

    yield from migrated_database_url("sqlite", tmp_path)


@pytest.fixture
def wired_app(settings: Settings, reader_factory: sessionmaker[Session]) -> Flask:
    profiles = (
        DicomAeProfile("CT01", max_length=(("PatientName", 8),)),
        DicomAeProfile("MR01"),
    )
    settings = settings.replace(dicom_ae_profiles=profiles)
    writers = sessionmaker(bind=reader_factory.kw["bind"], expire_on_commit=False)
    with writers.begin() as session:
        add_user(session, "admin", PASSWORD, "admin")
        start = dt.datetime.combine(TODAY, dt.time(9, 0))
        apply_order(
            session,
            one_step_order("ACC-LONG", start, patient_id="P1", patient_name="Longname^Jane"),
        )
        apply_order(
            session, one_step_order("ACC-SHORT", start, patient_id="P2", patient_name="Doe^Jo")
        )
        apply_order(
            session,
            one_step_order(
                "ACC-NOST", start, patient_id="P3", station="", modality="MR", patient_name="Roe^Al"
            ),
        )
        session.add(
            WatchdogAlert(
                key="hl7_silent",
                kind="hl7_silent",
                subject="HL7",
                summary="no HL7 message for 75 minutes",
                details=json.dumps({"minutes": 75}),
                state="firing",
                fired_at=utcnow(),
                notified="firing",
            )
        )
    return create_app(
        settings,
        reader_factory,
        config={"TESTING": True},
        hl7_reprocessor=functools.partial(reprocess_message, settings, writers),
        chain_reprocessor=ChainRunner(lambda: settings, writers),
        hl7_describer=describe_message,
        query_previewer=WorklistPreviewer(settings, reader_factory),
        item_lister=functools.partial(item_attributes, settings=settings),
        dicomweb_service=DicomWebService(settings, reader_factory, writers),
    )


def _page_urls(app: Flask) -> list[str]:
    """A URL for every GET route that answers a page (not the API, probes or files)."""
    urls = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.arguments - {"key"}:
            continue
        if rule.endpoint.startswith(("api.", "health.", "status.", "dicomweb.", "static")):
            continue
        if rule.endpoint in {"auth.login", "worklist.changes", "daylist.export"}:
            continue
        urls.append(re.sub(r"<int:key>", "1", rule.rule))
    return sorted(set(urls))


def test_every_page_passes_axe_and_shows_device_and_watchdog_warnings(wired_app: Flask):
    from playwright.sync_api import expect

    with serving(wired_app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        log_in(page, base, "admin", PASSWORD)

        # The day list: the watchdog's alert, the device warning on CT01's long name only,
        # the marker of the step without a station.
        page.goto(f"{base}/?date={TODAY.isoformat()}")
        expect(
            page.get_by_role("alert").filter(has_text="No HL7 message for 75 minutes")
        ).to_be_visible()
        long_row = page.locator("tr", has_text="ACC-LONG")
        expect(long_row.locator(".device-warning")).to_contain_text("1 device problem")
        assert page.locator("tr", has_text="ACC-SHORT").locator(".device-warning").count() == 0
        expect(page.locator("tr", has_text="ACC-NOST").locator(".no-station")).to_be_visible()
        screenshot(page, "daylist-device-warnings")
        # The marker leads to the item page's note.
        long_row.locator(".device-warning").click()
        expect(page.locator("#device-findings")).to_contain_text("CT01")

        problems: dict[str, list[str]] = {}
        walked = 0
        for lang in ("en", "de"):
            page.goto(f"{base}/")
            page.locator("select[name=lang]").select_option(lang)
            page.get_by_role("button", name=re.compile("Switch|Wechseln")).click()
            for url in _page_urls(wired_app):
                response = page.goto(f"{base}{url}")
                assert response is not None and response.status < 500, (url, response)
                if response.status >= 400:
                    continue  # a page that needs rows this test has not (404) is not walked
                walked += 1
                found = axe_violations(page)
                if found:
                    problems[f"{lang} {url}"] = found
        assert not problems, json.dumps(problems, indent=1)
        # Every page with its rows: the day list, items, messages, scanners, settings, ...
        assert walked >= 2 * 15, walked
