"""The JSON API against its own OpenAPI document, fuzzed by schemathesis (no server errors)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings

from mwl.admin.tokens import create_token
from mwl.store.models import Hl7Message, QueryLogEntry, User, utcnow
from web.openapi import document

# Small on purpose: nine operations, positive and negative examples each, on two
# databases; the hand-written tests in test_api.py cover the cases that matter.
MAX_EXAMPLES = 8

# Loaded from the document as data: schemathesis' fixture loader
# (schemathesis.pytest.from_fixture) fails on pytest 9 (it sets Item._nodeid, which
# pytest 9 no longer has). The app serves this very document (checked below).
# Creating and changing an item follow rules of the core that no schema can state
# (a patient the worklist does not know needs a name; a birth date not in the
# future; only a temporary patient ID may change): a schema-valid body may get 400
# there. Everywhere else, whatever the document admits must be accepted.
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES},
        "operations": [
            # DICOMweb: a query parameter or a payload that the schema admits still
            # names attributes and values the matching and MPPS rules judge (400), an
            # MPPS UID that does not exist (404) or is taken (409).
            {
                "include-operation-id": [
                    "searchScheduledProcedureSteps",
                    "retrievePerformedProcedureStep",
                    "createOrUpdatePerformedProcedureStep",
                ],
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "400", "401", "403", "404", "409"]
                    }
                },
            },
            {
                "include-operation-id": ["createItem", "updateItem"],
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "400", "401", "403", "404", "409"]
                    }
                },
            },
        ],
    }
)
schema = schemathesis.openapi.from_dict(document(), config=CONFIG)


class _AppUnderTest:
    """The WSGI app of the running test (each test has its own database)."""

    app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        assert self.app is not None, "the api_app fixture installs the app"
        return self.app(environ, start_response)


_app_under_test = _AppUnderTest()
# As schemathesis.openapi.from_wsgi does: every request, the probes of the checks
# included, goes to this WSGI app rather than over the network.
schema.app = _app_under_test


@pytest.fixture
def editor_token(session_factory) -> str:
    """An API token of an editor, who may call every operation."""
    with session_factory.begin() as session:
        session.add(User(username="fuzzer", password_hash="-", role="editor"))
        session.flush()
        return create_token(session, "fuzzer", "schemathesis")


@pytest.fixture
def api_app(csrf_app: Flask, session_factory, add_order) -> Iterator[Flask]:
    """The app as in production, over a database with a few rows to find."""
    today = dt.datetime.combine(dt.date.today(), dt.time(9, 0))
    for n in range(3):
        add_order(f"ACC{n}", today + dt.timedelta(hours=n), patient_id=f"P{n}")
    with session_factory.begin() as session:
        session.add(Hl7Message(raw=b"MSH|^~\\&|RIS|HOSP\r", message_type="ORM^O01", outcome="AA"))
        session.add(QueryLogEntry(received_at=utcnow(), calling_ae_title="CT01", matches=2))
    served = csrf_app.test_client().get("/api/v1/openapi.json")
    assert served.status_code == 200 and served.json == document()
    _app_under_test.app = csrf_app
    yield csrf_app
    _app_under_test.app = None


@pytest.mark.slow  # schemathesis draws many requests per operation
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi_document(case, api_app, editor_token):
    # Every check schemathesis has: no 5xx, documented status codes, content types
    # and headers, response bodies matching their schemas, invalid input refused,
    # and the token actually required.
    case.call_and_validate(headers={"Authorization": f"Bearer {editor_token}"})
