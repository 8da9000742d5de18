"""/ready follows the database: a PostgreSQL of the test's own, stopped and started again.

The shared cluster on 5432 serves the other tests, so this one starts a dedicated
server with ``initdb``/``pg_ctl`` (Debian's PostgreSQL 15) in a temporary directory on
a free port, and stops it under the running broker. /health stays 200 throughout:
the process and its listeners are up, and the balancer must not drop a node for
what another node would suffer too.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import Peer
from tests.prometheus import free_port
from tests.serve import broker_env, start_broker

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_CTL = Peer(PG_BIN / "pg_ctl", "postgresql-15")
WAIT_S = 30

pytestmark = [pytest.mark.e2e, PG_CTL.required]


@dataclass
class OwnPostgres:
    """A PostgreSQL server of this test only."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            command = ["/usr/sbin/runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def init(self) -> None:
        self._run(
            PG_BIN / "initdb",
            "-D",
            self.directory / "data",
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory}"
        self._run(
            PG_CTL,
            "-D",
            self.directory / "data",
            "-o",
            options,
            "-l",
            self.directory / "log",
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(PG_CTL, "-D", self.directory / "data", "-m", mode, "-w", "stop")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    directory = Path(tempfile.mkdtemp(prefix="mwl-own-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    server = OwnPostgres(directory, free_port())
    server.init()
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop("immediate")
        except AssertionError:
            pass  # already stopped by the test
        shutil.rmtree(directory, ignore_errors=True)


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
