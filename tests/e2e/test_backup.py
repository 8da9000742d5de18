"""``mwl backup`` while the broker takes orders, and a broker started on the copy.

SQLite: the online backup API copies the database during HL7 ingest; every order
ACKed before the backup started is in the copy, ``integrity_check`` says ok, and
``mwl serve`` on the copy answers for them. PostgreSQL: ``mwl backup`` runs
``pg_dump`` (custom format); ``pg_restore`` into a new database gives a schema
that ``mwl serve`` serves the same orders from.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.databases import POSTGRES_URL, fresh_database_url, postgres_unavailable
from tests.ingest import Feeder, ct_accessions
from tests.peers import PG_RESTORE
from tests.serve import AE_TITLE, broker_env, run_mwl, start_broker

pytestmark = pytest.mark.e2e

TODAY = dt.date.today()


def backup_during_ingest(database_url: str, target: Path, cwd: Path) -> tuple[set[str], str]:
    """Start a broker, back up while orders stream in; (ACKed before, command output)."""
    env = broker_env(database_url)
    broker = start_broker(env, cwd)
    feeder = Feeder(broker.hl7_port, TODAY).start()
    try:
        feeder.wait_for(30)
        # An AA is sent after its commit: what is ACKed now is in the backup.
        before = feeder.accepted()
        done = run_mwl(["backup", str(target)], env, cwd)
        during = len(feeder.acks)
        feeder.wait_for(during + 5)  # ingest went on, and goes on after the backup
    finally:
        feeder.finish()
        assert broker.stop() == 0
    assert not feeder.errors, feeder.errors
    assert done.returncode == 0, done.stdout + done.stderr
    return before, done.stdout


def served_from(database_url: str, cwd: Path) -> set[str]:
    """The CT accession numbers of today that ``mwl serve`` on ``database_url`` answers."""
    broker = start_broker(broker_env(database_url), cwd)
    try:
        return ct_accessions(broker.dicom_port, TODAY, AE_TITLE)
    finally:
        assert broker.stop() == 0


def test_sqlite_backup_during_ingest_restores(tmp_path: Path):
    source = tmp_path / "live.db"
    copy = tmp_path / "backup" / "copy.db"
    copy.parent.mkdir()
    before, output = backup_during_ingest(f"sqlite:///{source}", copy, tmp_path)
    assert f"backup written to {copy}" in output and "integrity_check ok" in output
    assert not copy.with_name("copy.db.partial").exists()
    with sqlite3.connect(copy) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # Restore = start the broker on the copy (moved to where the live file was).
    restored = tmp_path / "restored.db"
    copy.rename(restored)
    assert before <= served_from(f"sqlite:///{restored}", tmp_path)


def test_backup_refuses_to_overwrite(tmp_path: Path):
    target = tmp_path / "exists.db"
    target.write_bytes(b"keep me")
    env = broker_env(f"sqlite:///{tmp_path / 'mwl.db'}")
    assert run_mwl(["db", "upgrade"], env, tmp_path).returncode == 0
    result = run_mwl(["backup", str(target)], env, tmp_path)
    assert result.returncode == 1 and "exists already" in result.stderr
    assert target.read_bytes() == b"keep me"


@pytest.fixture
def postgres_schema(tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url("postgresql", tmp_path, schema=f"mwl_backup_{os.getpid()}")


@pytest.fixture
def restore_database() -> Iterator[str]:
    """A new, empty PostgreSQL database of this test's own; its URL."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"mwl_restore_{os.getpid()}"
    admin = create_engine(
        make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        # The name is ours (a constant and the pid), never input.
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@PG_RESTORE.required
def test_pg_dump_during_ingest_restores_with_pg_restore(
    postgres_schema: str, restore_database: str, tmp_path: Path
):
    dump = tmp_path / "mwl.pgdump"
    before, output = backup_during_ingest(postgres_schema, dump, tmp_path)
    assert "pg_restore restores it" in output
    restored = subprocess.run(
        [str(PG_RESTORE), "--no-owner", f"--dbname={restore_database}", str(dump)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert restored.returncode == 0, restored.stderr
    schema = make_url(postgres_schema).query["options"]
    url = make_url(restore_database).update_query_dict({"options": schema})
    assert before <= served_from(url.render_as_string(hide_password=False), tmp_path)
