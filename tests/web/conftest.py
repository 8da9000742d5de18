"""Fixtures for the web adapter: apps on the migrated test database, users and orders."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user
from mwl.config import Settings
from mwl.dicom.dicomweb import DicomWebService
from mwl.domain import Code
from mwl.orders.apply import apply_order
from mwl.store.engine import make_session_factory
from tests.factories import one_step_order
from web import create_app

PASSWORD = "correct horse battery staple"


@pytest.fixture
def password() -> str:
    """The password of the ``user`` fixture's account."""
    return PASSWORD


@pytest.fixture
def reader_factory(engine: Engine) -> sessionmaker[Session]:
    """A reader session factory, as the composition root gives the web page."""
    return make_session_factory(engine)


def _dicomweb(settings: Settings, readers: sessionmaker[Session]) -> DicomWebService:
    # As mwl.cli.web_app lends it: the DICOM adapter's pipelines on the same database.
    writers = make_session_factory(readers.kw["bind"], writer=True)
    return DicomWebService(settings, readers, writers)


@pytest.fixture
def app(settings: Settings, reader_factory: sessionmaker[Session]) -> Flask:
    """The app with CSRF off, for tests about other things (one test turns it on)."""
    return create_app(
        settings,
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
        dicomweb_service=_dicomweb(settings, reader_factory),
    )


@pytest.fixture
def csrf_app(settings: Settings, reader_factory: sessionmaker[Session]) -> Flask:
    """The app as in production: CSRF protection on."""
    return create_app(
        settings,
        reader_factory,
        config={"TESTING": True},
        dicomweb_service=_dicomweb(settings, reader_factory),
    )


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client, not logged in."""
    return app.test_client()


@pytest.fixture
def user(session_factory: sessionmaker[Session]) -> str:
    """A viewer account ``alice`` with password :data:`PASSWORD`; returns the username."""
    with session_factory.begin() as session:
        add_user(session, "alice", PASSWORD, "viewer")
    return "alice"


@pytest.fixture
def logged_in(client: FlaskClient, user: str) -> FlaskClient:
    """The test client, logged in as ``alice``."""
    response = client.post("/login", data={"username": user, "password": PASSWORD})
    assert response.status_code == 302
    return client


AddOrder = Callable[..., str]


@pytest.fixture
def add_order(session_factory: sessionmaker[Session]) -> AddOrder:
    """Store an order with one step through ``apply_order``; returns its accession."""

    def add(
        accession: str,
        start: dt.datetime,
        *,
        patient_id: str = "PAT1",
        patient_name: str = "Doe^Jane",
        birth_date: str = "19800214",
        sex: str = "F",
        modality: str = "CT",
        station: str = "CT01",
        description: str = "CT head without contrast",
        control: str = "NW",
        order_status: str = "SC",
        protocol: tuple[Code, ...] = (),
    ) -> str:
        order = one_step_order(
            accession,
            start,
            patient_id=patient_id,
            patient_name=patient_name,
            birth_date=birth_date,
            sex=sex,
            modality=modality,
            station=station,
            description=description,
            protocol=protocol,
            control=control,
            status=order_status,
        )
        with session_factory.begin() as session:
            apply_order(session, order)
        return accession

    return add
