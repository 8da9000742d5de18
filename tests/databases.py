"""Test databases: empty ones, and migrated ones that cost no migration per test.

Running the Alembic migrations takes 0.3-0.7 s on the shared machine, and about a
thousand tests want a migrated database. So each test process migrates once per
backend and hands out copies:

* SQLite: one template file, migrated at first use, copied byte for byte per test.
* PostgreSQL: a schema of this process's own (``mwl_test_<pid>`` and the like, so two
  test runs on one server never collide) is migrated at first use and kept; every
  later test first checks that its structure is still what the migrations made (a
  test may drop or rename a table) and then deletes every row and restarts every
  sequence; a schema that changed is dropped and migrated again.

Tests of the migrations themselves take an empty database (:func:`fresh_database_url`)
and run the real migrations.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from mwl.store.engine import make_engine
from mwl.store.migrate import upgrade

POSTGRES_URL = os.environ.get("MWL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# One schema per test process, so that two test runs on one machine never collide.
POSTGRES_SCHEMA = f"mwl_test_{os.getpid()}"
# A leftover connection of a test must fail the next one clearly, not hang it.
RESET_LOCK_TIMEOUT = "10s"

# Everything that makes up a schema's structure, as one digest: columns with their
# types, defaults and NOT NULL, indexes, constraints. Equal digests: the same schema.
# (From pg_catalog: information_schema's views take four times as long.)
_STRUCTURE = """
    SELECT md5(string_agg(part, ',' ORDER BY part)) FROM (
        SELECT concat_ws(':', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                         a.attnotnull, pg_get_expr(d.adbin, d.adrelid)) AS part
        FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
          AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT pg_get_indexdef(indexrelid) FROM pg_index
        JOIN pg_class AS c ON c.oid = indexrelid
        WHERE c.relnamespace = current_schema()::regnamespace
        UNION ALL
        SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
    ) AS structure
"""


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


def _schema_url(schema: str) -> str:
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def fresh_database_url(
    backend: str, directory: Path, schema: str = POSTGRES_SCHEMA
) -> Iterator[str]:
    """Yield the URL of an empty database (no tables at all), then drop it.

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
    _forget(schema)
    # The schema name is ours (a constant and the pid), never input.
    _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    _admin(f"CREATE SCHEMA {schema}")
    yield _schema_url(schema)
    _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def migrated_database_url(
    backend: str, directory: Path, schema: str = POSTGRES_SCHEMA
) -> Iterator[str]:
    """Yield the URL of a database migrated to the newest revision and holding no rows.

    Arguments as for :func:`fresh_database_url`. The SQLite file is a copy of this
    process's template; the PostgreSQL schema is kept for the next test and dropped by
    :func:`drop_kept_databases` at the end of the session.
    """
    if backend == "sqlite":
        yield migrated_sqlite_url(directory)
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    yield _empty_migrated_schema(schema)


def migrated_sqlite_url(directory: Path, name: str = "mwl.db") -> str:
    """The URL of a new SQLite file in ``directory``: a copy of the migrated template."""
    path = directory / name
    shutil.copyfile(_sqlite_template(), path)
    return f"sqlite:///{path}"


@functools.cache
def _sqlite_template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"mwl-template-{os.getpid()}-"))
    path = folder / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    # The last connection closed checkpoints the WAL into the file: the file alone is
    # the database. Copying it with a WAL beside it would lose the migrations.
    assert not path.with_name(path.name + "-wal").exists(), "template WAL not checkpointed"
    return path


@dataclass(frozen=True)
class _KeptSchema:
    engine: Engine  # one pooled connection for the resets
    reset: str  # one statement: check the structure, delete every row, restart sequences


_kept: dict[str, _KeptSchema] = {}


def _forget(schema: str) -> None:
    kept = _kept.pop(schema, None)
    if kept is not None:
        kept.engine.dispose()


def _empty_migrated_schema(schema: str) -> str:
    url = _schema_url(schema)
    kept = _kept.get(schema)
    if kept is not None:
        try:
            with kept.engine.begin() as conn:
                conn.exec_driver_sql(kept.reset)
            return url
        except DBAPIError:
            pass  # changed by the last test (or locked by it): start again
    _forget(schema)
    _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    _admin(f"CREATE SCHEMA {schema}")
    engine = make_engine(url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            structure = conn.exec_driver_sql(_STRUCTURE).scalar_one()
            metadata = MetaData()
            metadata.reflect(conn)
            tables = [t.name for t in reversed(metadata.sorted_tables)]
    finally:
        engine.dispose()
    _kept[schema] = _KeptSchema(create_engine(url), _reset_statement(structure, tables))
    return url


def _reset_statement(structure: str, tables: list[str]) -> str:
    # One round trip per test. DELETE, not TRUNCATE: on these few rows it is twenty
    # times faster (TRUNCATE makes new files for every table and index). Children
    # come before their parents in ``tables``.
    deletes = "".join(f'DELETE FROM "{t}";\n' for t in tables if t != "alembic_version")
    return f"""
        DO $reset$ BEGIN
            PERFORM set_config('lock_timeout', '{RESET_LOCK_TIMEOUT}', true);
            -- Emptying test tables need not wait for the disk (the tests' commits do).
            PERFORM set_config('synchronous_commit', 'off', true);
            IF ({_STRUCTURE}) IS DISTINCT FROM '{structure}' THEN
                RAISE EXCEPTION 'the schema is no longer what the migrations made';
            END IF;
            {deletes}
            PERFORM setval(oid, 1, false) FROM pg_class
            WHERE relkind = 'S' AND relnamespace = current_schema()::regnamespace;
        END $reset$
    """


def drop_kept_schema(schema: str) -> None:
    """Drop a PostgreSQL schema :func:`migrated_database_url` may have kept."""
    if schema in _kept:
        _forget(schema)
        _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def drop_kept_databases() -> None:
    """Drop the PostgreSQL schemas :func:`migrated_database_url` kept, and the template."""
    for schema in list(_kept):
        drop_kept_schema(schema)
    if _sqlite_template.cache_info().currsize:
        shutil.rmtree(_sqlite_template().parent, ignore_errors=True)
        _sqlite_template.cache_clear()
