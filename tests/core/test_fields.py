"""Every consumer of the stored-field declaration (mwl.worklist.fields) sees every field.

Two ways: the declaration is held against the types and tables it names (WorklistItem,
the order's domain types, the ORM models, the item page's sections), and one value
per declared field, each different, is carried through every consumer: an order
stored by ``apply_order``, read back by matching (rows and ORM objects), matched on,
written by the JSON API and its document, returned by the DICOM response, shown on the
item page. A consumer that keeps a field list of its own and misses a field loses
that field's value here, and the failure names the field and the consumer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl import domain
from mwl.admin.users import add_user
from mwl.config import Settings
from mwl.dicom import keys as keytable
from mwl.dicom.listing import universal_identifier
from mwl.dicom.response import ResponseBuilder
from mwl.domain import Code, KeyMatch, MatchKind, SpsStatus, WorklistItem, WorklistQuery
from mwl.orders.apply import apply_order
from mwl.orders.edits import get_item
from mwl.store.engine import make_session_factory
from mwl.store.models import Patient, RequestedProcedure, ScheduledProcedureStep
from mwl.worklist.fields import BY_NAME, FIELDS, TEXT_KINDS, Kind, Section, StoredField
from mwl.worklist.matching import MATCHABLE_ATTRIBUTES, find_items, find_stored_items
from web import create_app
from web.api import item_json
from web.display import ITEM_SECTIONS, field_text
from web.openapi import document

MODELS = (Patient, RequestedProcedure, ScheduledProcedureStep)
# The order's domain type that carries the fields of each row.
DOMAIN_TYPES: dict[type[Any], type[Any]] = {
    Patient: domain.PatientDemographics,
    RequestedProcedure: domain.RequestedProcedure,
    ScheduledProcedureStep: domain.ScheduledStep,
}
# Columns of the three rows that are no field of the item, and why.
NOT_FIELDS = {
    "id": "the row's key (the step's is WorklistItem.step_key)",
    "patient_key": "the procedure's patient",
    "procedure_key": "the step's procedure",
    "patient_name_key": "the folded Patient's Name that matching uses",
    "sending_application": "MSH-3 of the last order message, kept for the message log",
    "sending_facility": "MSH-4, as sending_application",
    "updated_at": "when the row last changed",
}


# --- the declaration against what it names ---------------------------------------------


def test_the_declaration_names_each_field_once():
    assert len(BY_NAME) == len(FIELDS)
    keywords = [k for f in FIELDS for k in f.keywords]
    assert len(set(keywords)) == len(keywords)
    columns = [(f.model, c.key) for f in FIELDS for c in f.columns]
    assert len(set(columns)) == len(columns)
    for field in FIELDS:
        assert field.model in MODELS, field.name
        assert all(c.class_ is field.model for c in field.columns), field.name
        assert field.label and field.hl7 and field.keywords, field.name
        # HL7 sources are written SEG-n[.c] (docs/development.md), so they can be grepped.
        assert any(ch.isdigit() for ch in field.hl7) and "-" in field.hl7, field.name


def test_worklist_item_has_exactly_the_declared_fields():
    item_fields = {f.name for f in dataclasses.fields(WorklistItem)}
    assert item_fields - {"step_key"} == set(BY_NAME), "WorklistItem and mwl.worklist.fields"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_column_of_the_item_rows_is_declared(model):
    # A column added to a model (and its migration) but not declared would be stored
    # by nobody and shown nowhere.
    declared = {c.key for f in FIELDS if f.model is model for c in f.columns}
    columns = {c.key for c in inspect(model).column_attrs}
    assert columns - declared - set(NOT_FIELDS) == set(), f"{model.__name__}: not declared"
    assert declared <= columns


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_the_orders_domain_type_carries_the_rows_fields(model):
    carried = {f.name for f in dataclasses.fields(DOMAIN_TYPES[model])}
    wanted = {f.name for f in FIELDS if f.model is model and f.kind is not Kind.STATUS}
    assert wanted - carried == set(), f"{DOMAIN_TYPES[model].__name__} lacks them"


def test_every_field_is_in_one_section_of_the_item_page():
    shown = [f for section in ITEM_SECTIONS.values() for f in section]
    assert sorted(f.name for f in shown) == sorted(BY_NAME)
    assert set(ITEM_SECTIONS) == {s.value for s in Section}


# --- one value per field, through every consumer ----------------------------------------

START = dt.datetime(2030, 5, 6, 14, 30, 15)


def _value(index: int, field: StoredField) -> Any:
    """A value for ``field`` that no other field has (digits: valid in every VR used)."""
    number = str(1001 + index)
    if field.kind is Kind.DATE:
        return f"19{index:02}0101"
    if field.kind is Kind.CODE:
        return Code(f"C{number}", "99TEST", f"Code {number}")
    if field.kind is Kind.CODES:
        return (Code(f"P{number}", "99TEST", f"Protocol {number}"),)
    if field.kind is Kind.START:
        return START
    if field.kind is Kind.STATUS:
        return SpsStatus.SCHEDULED  # what NW/SC gives (ORC-1/ORC-5)
    return number


VALUES: dict[str, Any] = {f.name: _value(i, f) for i, f in enumerate(FIELDS)}


def _order() -> domain.Order:
    def values(model: type[Any]) -> dict[str, Any]:
        return {
            f.name: VALUES[f.name] for f in FIELDS if f.model is model and f.kind is not Kind.STATUS
        }

    step = domain.ScheduledStep(**values(ScheduledProcedureStep))
    procedure = domain.RequestedProcedure(**values(RequestedProcedure), steps=(step,))
    patient = domain.PatientDemographics(**values(Patient))
    return domain.Order("NW", "SC", patient, (procedure,), sending_facility="HOSP")


@pytest.fixture
def stored(session_factory: sessionmaker[Session]) -> WorklistItem:
    """The item of the order carrying every field's value, as matching reads it."""
    with session_factory.begin() as session:
        apply_order(session, _order())
    with session_factory() as session:
        (item,) = find_items(session, WorklistQuery(statuses=frozenset(SpsStatus)))
    return item


def _lost(found: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {name: (value, VALUES[name]) for name, value in found.items() if value != VALUES[name]}


def test_the_order_service_and_matching_keep_every_field(stored, session_factory):
    # apply_order's copies onto the rows, then matching's row -> item conversion.
    assert _lost({f.name: getattr(stored, f.name) for f in FIELDS}) == {}
    with session_factory() as session:
        (lazy,) = find_stored_items(session, WorklistQuery(statuses=frozenset(SpsStatus)))
        # worklist_item, from the ORM rows.
        from_orm = get_item(session, stored.step_key)
    assert lazy.item == stored
    assert from_orm == stored


def test_matching_finds_the_item_by_every_matchable_field(stored, session_factory):
    matchable = [f for f in FIELDS if f.kind in TEXT_KINDS]
    assert {f.name for f in matchable} <= MATCHABLE_ATTRIBUTES
    with session_factory() as session:
        for field in matchable:
            for value, count in ((VALUES[field.name], 1), ("0", 0)):
                query = WorklistQuery(
                    keys=(KeyMatch(field.name, MatchKind.SINGLE, (value,)),),
                    statuses=frozenset(SpsStatus),
                )
                assert len(find_items(session, query)) == count, (field.name, value)


def _json_form(field: StoredField, value: Any) -> Any:
    if field.kind is Kind.CODE:
        return {"value": value.value, "scheme": value.scheme, "meaning": value.meaning}
    if field.kind is Kind.CODES:
        return [{"value": c.value, "scheme": c.scheme, "meaning": c.meaning} for c in value]
    if field.kind is Kind.START:
        return value.isoformat()
    if field.kind is Kind.DATE:
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    if field.kind is Kind.STATUS:
        return value.value
    return value


def test_the_api_and_its_document_have_every_field(stored):
    body = item_json(stored)
    names = {f.api_name for f in FIELDS}
    assert set(body) == names | {"key", "status"}
    assert {f.api_name: body[f.api_name] for f in FIELDS} == {
        f.api_name: _json_form(f, VALUES[f.name]) for f in FIELDS
    }
    item_schema = document()["components"]["schemas"]["Item"]
    assert set(item_schema["properties"]) == names | {"key", "status"}
    assert set(item_schema["required"]) == names | {"key", "status"}


def _dicom_form(field: StoredField, keyword: str, value: Any) -> Any:
    """``value`` as a returned element holds it (sequences as their codes, else text)."""
    if field.kind is Kind.CODE:
        return (value,)
    if field.kind is Kind.START:
        return value.strftime("%Y%m%d" if keyword.endswith("Date") else "%H%M%S")
    if field.kind is Kind.STATUS:
        return value.value
    return value


def _returned(dataset: Dataset, keyword: str) -> Any:
    if keyword not in dataset:
        return None
    element = dataset[keyword]
    if element.VR == "SQ":
        return tuple(
            Code(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in element.value
        )
    return str(element.value)


def test_the_dicom_response_returns_every_field(stored):
    response = ResponseBuilder(universal_identifier()).build(stored)
    (sps,) = response.ScheduledProcedureStepSequence
    lost = {}
    for field in FIELDS:
        for keyword in field.keywords:
            spec = keytable.spec(keyword, keytable.Level.TOP) or keytable.spec(
                keyword, keytable.Level.SPS
            )
            if spec is None or spec.attribute not in (field.name, keytable.START):
                lost[keyword] = f"not in the key table as {field.name}"
                continue
            returned = _returned(sps if spec.level is keytable.Level.SPS else response, keyword)
            expected = _dicom_form(field, keyword, VALUES[field.name])
            if returned != expected:
                lost[keyword] = f"returned {returned!r}, stored {expected!r}"
    assert lost == {}


def test_the_item_page_shows_every_field(stored, settings: Settings, engine: Engine):
    app = create_app(
        settings,
        make_session_factory(engine),
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
    )
    with make_session_factory(engine, writer=True).begin() as session:
        add_user(session, "viewer", "correct horse battery staple", "viewer")
    client = app.test_client()
    login = {"username": "viewer", "password": "correct horse battery staple"}
    assert client.post("/login", data=login).status_code == 302
    page = client.get(f"/items/{stored.step_key}", headers={"Accept-Language": "en"}).text
    missing = []
    for field in FIELDS:
        # Dates, statuses and codes in the page's locale: formatted as in a request.
        with app.test_request_context(headers={"Accept-Language": "en"}):
            shown = html.escape(field_text(stored, field), quote=False)
        if f"<dt>{field.label}</dt><dd>" not in page or shown not in page:
            missing.append(f"{field.name}: {field.label!r} {shown!r}")
    assert missing == []
