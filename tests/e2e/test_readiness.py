"""/ready follows the database: a PostgreSQL of the test's own, stopped and started again.

The shared cluster on 5432 serves the other tests, so this one starts a dedicated
server with ``initdb``/``pg_ctl`` (Debian's PostgreSQL 15) in a temporary directory on
a free port, and stops it under the running broker. /health stays 200 throughout:
the process and its listeners are up, and the balancer must not drop a node for
what another node would suffer too.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.own_postgres import PG_CTL, OwnPostgres
from tests.serve import broker_env, start_broker

WAIT_S = 30

pytestmark = [pytest.mark.e2e, PG_CTL.required]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def _wait_status(url: str, status: int) -> tuple[int, str]:
    deadline = time.monotonic() + WAIT_S
    found = _get(url)
    while found[0] != status and time.monotonic() < deadline:
        time.sleep(0.2)
        found = _get(url)
    return found


def _database_up(base: str) -> str:
    _, text = _get(f"{base}/metrics")
    return next(line for line in text.splitlines() if line.startswith("mwl_database_up "))


def test_ready_follows_the_database(own_postgres: OwnPostgres, tmp_path: Path):
    broker = start_broker(broker_env(own_postgres.url), tmp_path)
    base = f"http://127.0.0.1:{broker.web_port}"
    try:
        status, body = _get(f"{base}/ready")
        assert status == 200, body
        assert json.loads(body)["database"] == "ok"
        assert _database_up(base) == "mwl_database_up 1.0"

        own_postgres.stop()
        status, body = _wait_status(f"{base}/ready", 503)
        assert status == 503, body
        assert json.loads(body)["status"] == "unready"
        assert json.loads(body)["database"] == "unavailable"
        # Still in service for the balancer: the process and its listeners are up.
        status, body = _get(f"{base}/health")
        assert status == 200, body
        assert json.loads(body)["listeners"] == {"hl7": "ok", "dicom": "ok"}
        assert _database_up(base) == "mwl_database_up 0.0"

        own_postgres.start()
        status, body = _wait_status(f"{base}/ready", 200)
        assert status == 200, body
        assert json.loads(body)["database"] == "ok"
        assert _database_up(base) == "mwl_database_up 1.0"
    finally:
        code = broker.stop()
    assert code == 0
