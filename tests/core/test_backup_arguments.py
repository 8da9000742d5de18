"""pg_dump's arguments for ``mwl backup``: never the password on the command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mwl.errors import MwlError
from mwl.store.backup import backup, libpq_arguments


def test_password_goes_to_the_environment_and_search_path_to_schema():
    arguments, env = libpq_arguments(
        "postgresql+psycopg://mwl:s3cr%40t@db.example:5433/worklist"
        "?options=-csearch_path%3Dmwl_site&sslmode=require"
    )
    assert arguments == [
        "--dbname=postgresql://mwl@db.example:5433/worklist?sslmode=require",
        "--schema=mwl_site",
    ]
    assert env["PGPASSWORD"] == "s3cr@t"
    assert not any("s3cr" in argument for argument in arguments)


def test_no_password_no_schema():
    arguments, env = libpq_arguments("postgresql://postgres@127.0.0.1/test")
    assert arguments == ["--dbname=postgresql://postgres@127.0.0.1/test"]
    assert env.get("PGPASSWORD") == os.environ.get("PGPASSWORD")


def test_a_missing_sqlite_file_is_an_error(tmp_path: Path):
    with pytest.raises(MwlError, match="no SQLite database file"):
        backup(f"sqlite:///{tmp_path / 'none.db'}", tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()
