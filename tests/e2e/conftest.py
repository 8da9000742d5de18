"""A real ``mwl serve`` process on a new database with a web user ``admin``, per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.own_postgres import own_postgres  # noqa: F401 (a fixture of the e2e tests)
from tests.serve import ADMIN_PASSWORD, Broker, broker_env, run_mwl, start_broker


@pytest.fixture
def broker(empty_database_url: str, tmp_path: Path) -> Iterator[Broker]:
    """``mwl serve`` as a subprocess, with a web user ``admin``; stopped afterwards.

    Its database starts without tables, as after installation: ``mwl user add``
    migrates it.
    """
    env = broker_env(empty_database_url)
    added = run_mwl(
        ["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    running = start_broker(env, tmp_path)
    try:
        yield running
    finally:
        running.stop()
