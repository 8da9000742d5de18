"""The copied test databases are what the migrations make, and empty every time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from mwl.admin.users import add_user
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.migrate import alembic_config
from mwl.store.models import User
from tests.databases import drop_kept_schema, migrated_database_url

SCHEMA = f"mwl_copies_{os.getpid()}"


def _check_migrated_and_empty(url: str) -> None:
    engine = make_engine(url)
    try:
        config = alembic_config(engine)
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.check(config)  # the models' schema, column for column
            head = ScriptDirectory.from_config(config).get_current_head()
            assert MigrationContext.configure(connection).get_current_revision() == head
            for table in inspect(connection).get_table_names():
                if table != "alembic_version":
                    count = connection.scalar(select(func.count()).select_from(text(table)))
                    assert count == 0, f"{table} has {count} rows"
    finally:
        engine.dispose()


# What a test may leave behind: rows, a changed table, a missing index, a missing table.
DIRT = (
    "ALTER TABLE patient ADD COLUMN left_behind INTEGER",
    "DROP INDEX ix_audit_event_at",
    "DROP TABLE hl7_message_link",
)


@pytest.mark.slow  # migrates again after each change, on purpose
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_each_copy_is_at_head_and_empty_whatever_the_last_test_did(backend, tmp_path: Path):
    try:
        for number, dirt in enumerate((*DIRT, None)):
            folder = tmp_path / str(number)
            folder.mkdir()
            for url in migrated_database_url(backend, folder, SCHEMA):
                _check_migrated_and_empty(url)
                engine = make_engine(url)
                try:
                    with make_session_factory(engine, writer=True).begin() as session:
                        add_user(session, f"user{number}", "a long enough pass phrase", "viewer")
                        # Row numbers start at 1 every time, as in a new database.
                        assert session.scalar(select(User.id)) == 1
                    if dirt is not None:
                        with engine.begin() as connection:
                            connection.exec_driver_sql(dirt)
                finally:
                    engine.dispose()
    finally:
        drop_kept_schema(SCHEMA)
