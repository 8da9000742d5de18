"""Shared fixtures: settings, and a migrated database on SQLite and on PostgreSQL.

Database tests take the ``database_url`` fixture (directly or through ``engine`` /
``session_factory``) and so run once per backend. PostgreSQL is the server at
``MWL_TEST_POSTGRES_URL`` (default: 127.0.0.1:5432, user postgres, database test);
where none answers, those runs skip with the reason. Each PostgreSQL test gets the
schema ``mwl_test`` emptied, so it never touches other tables of that database.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.db import make_engine, make_session_factory
from mwl.migrate import upgrade

POSTGRES_URL = os.environ.get(
    "MWL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# One schema per test process, so that two test runs on one machine never collide.
POSTGRES_SCHEMA = f"mwl_test_{os.getpid()}"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@functools.cache
def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=2):
            pass
    except OSError as exc:
        return f"PostgreSQL not reachable at {url.host}:{url.port or 5432} ({exc.strerror or exc})"
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any driver error means: skip, and say why
        return f"PostgreSQL at {url.host}:{url.port or 5432} refused the test login: {exc}"
    return None


def postgres_test_url() -> str:
    """The PostgreSQL URL with the test schema as search path."""
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    url = url.update_query_dict({"options": f"-csearch_path={POSTGRES_SCHEMA}"})
    return url.render_as_string(hide_password=False)


def _reset_postgres_schema() -> None:
    engine = create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {POSTGRES_SCHEMA}"))
    engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_schema() -> Iterator[None]:
    yield
    if postgres_unavailable() is None:
        engine = create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE"))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (not yet migrated), once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mwl.db'}"
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    _reset_postgres_schema()
    return postgres_test_url()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head with the project's migrations."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A writer session factory on the migrated database."""
    return make_session_factory(engine, writer=True)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for in-process servers: loopback, ephemeral ports, the test database."""
    return Settings(
        database_url=database_url,
        bind_address="127.0.0.1",
        hl7_port=0,
        dicom_port=0,
        web_port=0,
        web_secret_key="test-secret-key",
    )
