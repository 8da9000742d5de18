"""Test databases: an empty SQLite file or a PostgreSQL schema of this process's own."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("MWL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# One schema per test process, so that two test runs on one machine never collide.
POSTGRES_SCHEMA = f"mwl_test_{os.getpid()}"


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


def _admin(statement: str) -> None:
    engine = create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def fresh_database_url(
    backend: str, directory: Path, schema: str = POSTGRES_SCHEMA
) -> Iterator[str]:
    """Yield the URL of an empty database, then drop it.

    ``backend`` is ``sqlite`` (a file in ``directory``) or ``postgresql`` (the schema
    ``schema``, which must be named for this process: other test runs share the
    server). PostgreSQL skips the test, with the reason, where no server answers.
    """
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'mwl.db'}"
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    # The schema name is ours (a constant and the pid), never input.
    _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    _admin(f"CREATE SCHEMA {schema}")
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
