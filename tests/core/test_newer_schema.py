"""A database a newer release has migrated: this release runs on it and says so.

During a rolling upgrade (docs/upgrading.md) the old nodes go on serving, and may
restart, on the schema the first new node migrated; the expand/contract rule keeps
that schema compatible with the previous release.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from mwl.operations.health import database_readiness
from mwl.store.migrate import current_revision, head_revision, known_revision, upgrade

FUTURE = "0999_from_a_newer_release"


def _stamp(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_known_revisions():
    assert known_revision(head_revision() or "")
    assert known_revision("0001_initial")
    assert not known_revision(FUTURE)


def test_upgrade_leaves_a_newer_schema_alone_and_warns(
    engine: Engine, caplog: pytest.LogCaptureFixture
):
    _stamp(engine, FUTURE)
    with caplog.at_level(logging.WARNING, logger="mwl.store.migrate"):
        upgrade(engine)
    assert current_revision(engine) == FUTURE
    assert "newer than this release" in caplog.text and FUTURE in caplog.text


def test_a_newer_schema_is_ready_an_older_one_is_not(engine: Engine):
    _stamp(engine, FUTURE)
    found = database_readiness(engine)
    assert (found.ready, found.database, found.revision) == (True, "newer schema", FUTURE)
    _stamp(engine, "0009_audit_queue")
    found = database_readiness(engine)
    assert (found.ready, found.database) == (False, "not migrated")


@pytest.mark.slow
def test_db_upgrade_says_it_left_a_newer_schema(database_url: str, tmp_path):
    from mwl.store.engine import make_engine
    from tests.serve import broker_env, run_mwl

    engine = make_engine(database_url)
    try:
        _stamp(engine, FUTURE)
    finally:
        engine.dispose()
    done = run_mwl(["db", "upgrade"], broker_env(database_url), tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"database is at {FUTURE}, newer than this release" in done.stdout
    assert "newer than this release knows" in done.stderr
