"""Every route, with out-of-range and malformed values: 4xx, never a 5xx.

The walk enumerates ``app.url_map``, so a new route is walked without being named
here. Each route gets hostile values in its path parameters and, one at a time, in
every query parameter its module reads (the table below; a test checks it against
the sources, so a new parameter cannot be left out) and in every form field its
page shows, on top of valid values, so that a bad value reaches the code that
uses it rather than the first check that fails.
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.routing import IntegerConverter, Rule

from mwl.admin.tokens import create_token
from mwl.admin.users import add_user
from mwl.config import Settings
from mwl.dicom.dicomweb import DicomWebService
from mwl.dicom.listing import item_attributes
from mwl.dicom.preview import WorklistPreviewer
from mwl.hl7.describe import describe_message
from mwl.hl7.reprocess import ChainRunner, reprocess_message
from mwl.store.models import Hl7Message, QueryLogEntry
from tests.web.conftest import PASSWORD
from web import create_app

WEB = Path(__file__).resolve().parents[2] / "web"

# Too big for a 32-bit key, for a signed 64-bit integer, for an unsigned one; a run
# of nines; negative and zero; dates at and past the ends of the calendar; long
# text; not a number; NUL bytes and other control characters.
HOSTILE = [
    "2147483648",
    "9223372036854775808",
    "18446744073709551616",
    "9" * 60,
    "9" * 5000,  # past int()'s 4300-digit limit
    "-1",
    "-9223372036854775809",
    "0",
    "9999-12-31",
    "0001-01-01",
    "9999-12-31T23:59:59",
    "0001-01-01T00:00",
    "10000-01-01",
    "2026-02-30",
    "x" * 5000,
    "abc",
    "1e400",
    "NaN",
    "\x00",
    "CT\x0001",
    "\x1b[2J",
    " ",
]

# The query parameters each module's views read (the API's come from its OpenAPI
# document). test_the_parameter_table_covers_what_the_views_read keeps it complete.
QUERY_PARAMETERS: dict[str, tuple[str, ...]] = {
    "auth": ("next",),
    "worklist": (
        "date",
        "to",
        "modality",
        "station",
        "status",
        "q",
        "priority",
        "sort",
        "dir",
        "page",
        "size",
        "refresh",
        "since",
    ),
    # The day list's own (web.worklist.parse_view), and the bulk forms' fields.
    "daylist": (
        "date",
        "to",
        "modality",
        "station",
        "status",
        "q",
        "priority",
        "sort",
        "dir",
        "page",
        "size",
        "refresh",
        "step",
        "action",
        "next",
        "reason",
    ),
    "messages": ("type", "outcome", "from", "until", "before"),
    "scanners": ("ae", "before"),
    "items": (),
    "i18n": (),
    "status": (),
    "health": (),
    "admin": (),
    "tokens": (),
    "account": (),
    "alerts": (),
    "users": (),
    "static": (),
    "api": (),  # from the OpenAPI document
    "dicomweb": ("offset", "limit", "fuzzymatching", "includefield", "update", "PatientID"),
}
# The form fields of the routes that take a POST but show no form of their own (the
# button sits on another page); the forms with a page are read from that page.
POST_FIELDS: dict[str, tuple[str, ...]] = {
    "items.cancel": ("reason",),
    "daylist.bulk_confirm": ("step", "action", "next"),
    "daylist.bulk_apply": ("step", "action", "next", "reason"),
    "items.restore": ("reason",),
    "tokens.create": ("name",),
    "i18n.choose": ("lang", "next"),
    "auth.login": ("username", "password"),
}
# Valid values the hostile one is added to, so that it gets past the other checks.
BASE_QUERY: dict[str, dict[str, str]] = {
    "scanners.history": {"ae": "CT01"},
    "scanners.test": {"ae": "CT01", "modality": "CT"},
}


@pytest.fixture
def walk_app(settings: Settings, reader_factory: sessionmaker[Session]) -> Flask:
    """The app as mwl.cli wires it, every adapter service lent (CSRF off: forms reach the view)."""
    writers = sessionmaker(bind=reader_factory.kw["bind"], expire_on_commit=False)
    return create_app(
        settings,
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
        hl7_reprocessor=functools.partial(reprocess_message, settings, writers),
        chain_reprocessor=ChainRunner(lambda: settings, writers),
        hl7_describer=describe_message,
        query_previewer=WorklistPreviewer(settings, reader_factory),
        item_lister=functools.partial(item_attributes, settings=settings),
        dicomweb_service=DicomWebService(settings, reader_factory, writers),
    )


@pytest.fixture
def token(session_factory: sessionmaker[Session], add_order) -> str:
    """An admin ``root`` (password PASSWORD) with an API token; one of each kind of row."""
    add_order("ACC-WALK", dt.datetime.combine(dt.date.today(), dt.time(9, 0)))
    with session_factory.begin() as session:
        add_user(session, "root", PASSWORD, "admin")
        session.flush()
        session.add(
            Hl7Message(
                message_control_id="WALK1",
                message_type="ORM^O01",
                sending_application="RIS",
                sending_facility="HOSP",
                raw=b"MSH|^~\\&|RIS|HOSP|MWL|HOSP|20261207||ORM^O01|WALK1|P|2.5\r",
                outcome="AA",
            )
        )
        session.add(
            QueryLogEntry(
                calling_ae_title="CT01",
                called_ae_title="MWL",
                peer_address="10.0.0.5:40000",
                identifier_json=json.dumps({"Modality": "CT"}),
                matches=1,
                duration_ms=1.0,
                status=0,
                error="",
            )
        )
        return create_token(session, "root", "walk")


def _module(rule: Rule) -> str:
    return rule.endpoint.partition(".")[0]


def _path_variants(rule: Rule) -> Iterator[str]:
    """The rule's URL with each argument in turn hostile (the others a plain 1 / name)."""
    names = list(rule.arguments)
    for name in names:
        for value in HOSTILE:
            url = rule.rule
            for other in names:
                text = value if other == name else _plain(rule, other)
                url = _ARGUMENT(other).sub(quote(text, safe=""), url)
            yield url


def _ARGUMENT(name: str) -> re.Pattern[str]:  # noqa: N802 - reads as a pattern
    return re.compile(r"<(?:[^:<>]+:)?" + re.escape(name) + ">")


def _plain(rule: Rule, name: str) -> str:
    # Werkzeug keeps the converters in a private mapping; no public accessor exists.
    if isinstance(rule._converters[name], IntegerConverter):
        return "1"
    return {"filename": "style.css", "name": "hl7_modality_map"}.get(name, "x")


def _plain_url(rule: Rule) -> str:
    url = rule.rule
    for name in rule.arguments:
        url = _ARGUMENT(name).sub(_plain(rule, name), url)
    return url


def _api_parameters(app: Flask, client: FlaskClient) -> dict[tuple[str, str], list[str]]:
    """(path template, method) -> the query parameter names the OpenAPI document lists."""
    document = client.get("/api/v1/openapi.json").get_json()
    found: dict[tuple[str, str], list[str]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            names = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]
            found[(path, method.upper())] = names
    return found


_FIELD = re.compile(r'<(?:input|select|textarea)\b[^>]*\bname="([^"]+)"')


def _form_fields(client: FlaskClient, url: str) -> list[str]:
    """The names of the fields a page's form shows (read from the page itself)."""
    page = client.get(url)
    if page.status_code != 200 or page.mimetype != "text/html":
        return []
    names = {m.group(1) for m in _FIELD.finditer(page.get_data(as_text=True))}
    return sorted(names - {"csrf_token", "lang", "next"})


def _check(failures: list[str], response, what: str) -> None:  # noqa: ANN001
    if response.status_code >= 500:
        failures.append(f"{response.status_code} {what}")


# About 3,000 requests per database: CI runs it in the sweep after the default run.
@pytest.mark.sweep
def test_every_route_answers_hostile_values_with_4xx_never_5xx(walk_app: Flask, token: str):
    app = walk_app
    client = app.test_client()
    login = client.post("/login", data={"username": "root", "password": PASSWORD})
    assert login.status_code == 302
    bearer = {"Authorization": f"Bearer {token}"}
    api_parameters = _api_parameters(app, app.test_client())
    failures: list[str] = []
    walked = 0

    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        api = rule.rule.startswith("/api/")
        # DICOMweb takes the API's tokens; its parameters are in the table above.
        headers = bearer if api or rule.rule.startswith("/dicomweb/") else {}
        for method in methods:
            # The session itself is not walked with a logout in the middle of it.
            if rule.endpoint == "auth.logout":
                continue
            body = {"json": {}} if headers and method != "GET" else {}

            for url in _path_variants(rule):
                response = client.open(url, method=method, headers=headers, **body)
                _check(failures, response, f"{method} {url[:120]!r}")
                walked += 1

            plain = _plain_url(rule)
            if method == "GET":
                if api:
                    template = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
                    template = template.removeprefix("/api/v1")
                    names = api_parameters.get((template, "GET"), [])
                else:
                    names = list(QUERY_PARAMETERS[_module(rule)])
                    if rule.endpoint == "scanners.test":
                        names += _form_fields(client, "/scanners/test?ae=CT01")
                base = BASE_QUERY.get(rule.endpoint, {})
                for name in names:
                    for value in HOSTILE:
                        query = {**base, name: value}
                        response = client.get(plain, query_string=query, headers=headers)
                        _check(failures, response, f"GET {plain} ?{name}={value[:40]!r}")
                        walked += 1
            elif method == "POST" and not api:
                fields = list(POST_FIELDS.get(rule.endpoint, ()))
                if "GET" in methods and rule.endpoint != "auth.login":
                    fields += _form_fields(client, plain)
                for name in fields:
                    for value in HOSTILE:
                        response = client.post(plain, data={name: value})
                        _check(failures, response, f"POST {plain} {name}={value[:40]!r}")
                        walked += 1
            elif api and method in {"POST", "PATCH"}:
                for value in HOSTILE:
                    for field in ("start", "patient_birth_date", "patient_id", "reason"):
                        response = client.open(
                            plain, method=method, headers=headers, json={field: value}
                        )
                        _check(failures, response, f"{method} {plain} {field}={value[:40]!r}")
                        walked += 1
            # The walk logs nobody out; a page may have changed the session's language.
            assert client.get("/account/tokens").status_code == 200, (rule.endpoint, method)

    assert walked > 1000
    assert not failures, "\n".join(failures[:60])


def _literal_names(tree: ast.AST) -> set[str]:
    """String keys read as ``<x>.args.get("k")``, ``args.get("k")`` or ``args["k"]``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            reads_args = (isinstance(target, ast.Attribute) and target.attr == "args") or (
                isinstance(target, ast.Name) and target.id == "args"
            )
            if node.func.attr in {"get", "getlist"} and reads_args and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.add(first.value)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            if node.value.id == "args" and isinstance(node.slice, ast.Constant):
                names.add(str(node.slice.value))
        # messages.read_filter reads its names from a tuple in a comprehension.
        if isinstance(node, ast.DictComp):
            for generator in node.generators:
                if isinstance(generator.iter, ast.Tuple):
                    for element in generator.iter.elts:
                        if isinstance(element, ast.Constant) and isinstance(element.value, str):
                            names.add(element.value)
    return names


def test_the_parameter_table_covers_what_the_views_read(walk_app: Flask):
    modules = {_module(rule) for rule in walk_app.url_map.iter_rules()}
    missing_modules = modules - QUERY_PARAMETERS.keys()
    assert not missing_modules, f"add these blueprints to QUERY_PARAMETERS: {missing_modules}"
    for module in modules - {"api", "static"}:
        read = _literal_names(ast.parse((WEB / f"{module}.py").read_text("utf-8")))
        unlisted = read - set(QUERY_PARAMETERS[module])
        assert not unlisted, f"web/{module}.py reads {sorted(unlisted)}: add to QUERY_PARAMETERS"


# The three requests issue 19 found answered with a 500.
@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/items/9223372036854775808", 404, "This page does not exist."),
        ("/scanners/history?ae=CT01&before=" + "9" * 40, 400, "The page link is not valid"),
        ("/?date=9999-12-31", 400, "The date must lie between 1900-01-01 and 2999-12-31."),
    ],
)
def test_the_requests_that_gave_a_500_now_get_a_4xx_with_a_message(
    walk_app: Flask, token: str, url: str, status: int, message: str
):
    client = walk_app.test_client()
    assert client.post("/login", data={"username": "root", "password": PASSWORD}).status_code == 302
    response = client.get(url)
    assert response.status_code == status
    assert message in response.get_data(as_text=True)
    # The edges themselves still work: the last key, the first cursor, the last day.
    assert client.get("/items/2147483647").status_code == 404
    assert client.get("/scanners/history?ae=CT01&before=1").status_code == 200
    assert client.get("/?date=2999-12-31").status_code == 200
    assert client.get("/?date=1900-01-01").status_code == 200
