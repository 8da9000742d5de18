"""A PostgreSQL server of one test's own: initdb/pg_ctl in a temporary directory, a free port.

The shared server on 5432 serves the other tests (and other runs): a test that stops,
restarts or kills PostgreSQL under a running broker starts one of these instead
(Debian's PostgreSQL 15 binaries). As root, the server runs as the postgres user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import Peer
from tests.prometheus import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_CTL = Peer(PG_BIN / "pg_ctl", "postgresql-15")


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

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart``: the options of the last start again."""
        data = self.directory / "data"
        self._run(PG_CTL, "-D", data, "-m", mode, "-l", self.directory / "log", "-w", "restart")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A started server of this test only; stopped (immediate) and removed afterwards."""
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
