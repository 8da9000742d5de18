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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_each_copy_is_at_head_and_empty_whatever_the_last_test_did(backend, tmp_path: Path):
    first = tmp_path / "first"
    first.mkdir()
    try:
        for url in migrated_database_url(backend, first, SCHEMA):
            _check_migrated_and_empty(url)
            engine = make_engine(url)
            try:
                with make_session_factory(engine, writer=True).begin() as session:
                    add_user(session, "ada", "pw", "admin")
                with engine.begin() as connection:
                    connection.exec_driver_sql("DROP TABLE hl7_message_link")
            finally:
                engine.dispose()

        second = tmp_path / "second"
        second.mkdir()
        for url in migrated_database_url(backend, second, SCHEMA):
            _check_migrated_and_empty(url)
            engine = make_engine(url)
            try:
                with make_session_factory(engine, writer=True).begin() as session:
                    add_user(session, "bob", "pw", "viewer")
                    # Row numbers start again at 1, as in a new database.
                    assert session.scalar(select(User.id)) == 1
            finally:
                engine.dispose()

        third = tmp_path / "third"
        third.mkdir()
        for url in migrated_database_url(backend, third, SCHEMA):
            _check_migrated_and_empty(url)  # rows of the last test gone, table kept
    finally:
        drop_kept_schema(SCHEMA)
