"""Every page of the web adapter, rendered in German, shows no English words and no ISO dates.

``tools/i18n.py check`` finds text that is not marked for translation in the sources;
this test finds what only shows when a page is rendered: a label built in Python, a
WTForms message, a status value, an enum, a date in ISO form. It walks every GET
route of the app (so a new page is covered without being listed here), plus the
forms with errors, as an admin whose browser asks for de-CH.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from html.parser import HTMLParser

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.routing import IntegerConverter, Rule

from mwl.admin.users import add_user
from mwl.config import Settings
from mwl.dicom.listing import item_attributes
from mwl.dicom.preview import WorklistPreviewer
from mwl.hl7.describe import describe_message
from mwl.hl7.reprocess import reprocess_message
from mwl.store.models import Hl7Message, QueryLogEntry
from tests.web.conftest import PASSWORD
from web import create_app

DAY = dt.date(2026, 11, 21)
GERMAN = {"Accept-Language": "de-CH,de;q=0.9"}
# Words that are English only: none of them is German, nor part of a DICOM or HL7
# name the German pages keep (attribute names such as "Scheduled Station AE Title").
ENGLISH = re.compile(
    r"\b(the|and|of|is|are|with|this|your|Save|Search|Delete|Remove|Back|Change|Show|"
    r"Log out|Log in|Password|Settings|Users?|Worklist|Today|today|never|received|"
    r"Invalid|required|Not a valid|must be|Field must|Canceled|Completed|Arrived|"
    r"Discontinued|Please|Yes|Created|Language|Switch)\b"
)
ISO_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
# Elements whose content is data, not text of the page: values, codes, messages.
DATA_ELEMENTS = frozenset({"code", "pre", "kbd", "samp", "textarea", "script", "style"})
TEXT_ATTRIBUTES = ("aria-label", "title", "placeholder", "alt")
# The forms whose errors are shown: (url, form data).
FORMS_WITH_ERRORS = (
    ("/admin/users", {"new-username": "", "new-password": "x", "new-repeat_password": "y"}),
    ("/account/password", {"current_password": "", "new_password": "", "repeat_password": "x"}),
    ("/orders/new", {"accession_number": "", "start": "morgen", "patient_birth_date": "31.02."}),
    ("/account/tokens", {"name": "x" * 200}),
)


VOID = frozenset({"area", "br", "col", "hr", "img", "input", "link", "meta", "source", "wbr"})


class VisibleText(HTMLParser):
    """The text a reader sees (and hears: labels for assistive technology)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = False  # inside an element whose content is not text of the page
        self._depth = 0  # elements opened inside it

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping:
            self._depth += tag not in VOID
            return
        named = dict(attrs)
        # Data, and names from the DICOM and HL7 standards kept as the standards write them.
        if tag in DATA_ELEMENTS or named.get("translate") == "no":
            self._skipping = tag not in VOID
            return
        for name in TEXT_ATTRIBUTES:
            if named.get(name):
                self.parts.append(str(named[name]))

    def handle_endtag(self, tag: str) -> None:
        if not self._skipping:
            return
        if self._depth:
            self._depth -= 1
        else:
            self._skipping = False

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def visible_text(page: str) -> str:
    parser = VisibleText()
    # The switch's English option is the one English word a German page must have.
    parser.feed(page.replace(">English</option>", "></option>"))
    return " ".join(" ".join(parser.parts).split())


@pytest.fixture
def german_admin(
    settings: Settings, reader_factory: sessionmaker[Session], session_factory, add_order
) -> FlaskClient:
    start = dt.datetime.combine(DAY, dt.time(7, 45))
    add_order("ACC1", start, birth_date="19640312", description="CT Schädel nativ")
    add_order("ACC2", start, patient_id="P2", description="CT Thorax")
    add_order(
        "ACC2", start, patient_id="P2", description="CT Thorax", control="CA", order_status="CA"
    )
    with session_factory.begin() as session:
        add_user(session, "root", PASSWORD, "admin")
        session.add(
            Hl7Message(
                message_control_id="M1",
                message_type="ORM^O01",
                sending_application="RIS",
                sending_facility="SPITAL",
                raw=b"MSH|^~\\&|RIS|SPITAL|MWL|SPITAL|20261121||ORM^O01|M1|P|2.5\r",
                outcome="RECEIVED",
            )
        )
        session.add(
            QueryLogEntry(
                calling_ae_title="CT01",
                called_ae_title="MWL",
                peer_address="127.0.0.1:40000",
                identifier_json=json.dumps({"Modality": "CT"}),
                matches=1,
                duration_ms=1.0,
                status=0,
                error="",
            )
        )
    writers = sessionmaker(bind=reader_factory.kw["bind"], expire_on_commit=False)
    app = create_app(
        settings,
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
        hl7_reprocessor=functools.partial(reprocess_message, settings, writers),
        hl7_describer=describe_message,
        query_previewer=WorklistPreviewer(settings, reader_factory),
        item_lister=functools.partial(item_attributes, settings=settings),
    )
    client = app.test_client()
    client.post("/login", data={"username": "root", "password": PASSWORD}, headers=GERMAN)
    return client


def _get_urls(app: Flask) -> list[str]:
    """A URL for every GET route that shows a page (keys of the rows made above)."""
    urls = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.endpoint in {"static", "auth.login"}:
            continue
        if rule.endpoint.startswith(("api.", "health.", "status.")):
            continue
        url = rule.rule
        for name in rule.arguments:
            url = re.sub(r"<(?:[^:<>]+:)?" + name + ">", _value(rule, name), url)
        urls.append(url)
    return sorted(urls)


def _value(rule: Rule, name: str) -> str:
    # Werkzeug keeps the converters in a private mapping; no public accessor exists.
    if isinstance(rule._converters[name], IntegerConverter):
        return "1"
    return {"name": "hl7_modality_map"}.get(name, "x")


QUERIES = {
    "/": f"?date={DAY.isoformat()}",
    "/scanners/test": "?ae=CT01&modality=CT",
    "/scanners/history": "?ae=CT01",
}


def _problems(url: str, page: str) -> list[str]:
    text = visible_text(page)
    found = [
        f"{url}: English {m.group(0)!r} in …{_around(text, m)}…" for m in ENGLISH.finditer(text)
    ]
    found += [
        f"{url}: ISO date {m.group(0)!r} in …{_around(text, m)}…" for m in ISO_DATE.finditer(text)
    ]
    return found


def _around(text: str, match: re.Match[str]) -> str:
    return text[max(0, match.start() - 40) : match.end() + 40]


def test_every_page_in_german_has_no_english_and_no_iso_dates(german_admin):
    app = german_admin.application
    problems = []
    pages = 0
    for url in _get_urls(app):
        response = german_admin.get(url + QUERIES.get(url, ""), headers=GERMAN)
        if response.mimetype != "text/html":
            continue
        pages += 1
        assert '<html lang="de-CH">' in response.text, url
        problems += _problems(url, response.text)
    for url, data in FORMS_WITH_ERRORS:
        response = german_admin.post(url, data=data, headers=GERMAN)
        assert response.status_code in {400, 422}, url
        problems += _problems(f"POST {url}", response.text)
    for url in ("/no-such-page", "/items/999999"):
        problems += _problems(url, german_admin.get(url, headers=GERMAN).text)
    assert pages >= 15
    assert not problems, "\n".join(problems)


def test_the_scan_would_catch_english(german_admin):
    page = "<html><body><p>Nothing is scheduled on this day</p><p>2026-11-21</p></body></html>"
    assert len(_problems("/", page)) == 3  # "is", "this" and the ISO date


def test_login_page_in_german(client):
    page = client.get("/login", headers=GERMAN).text
    assert not _problems("/login", page)
