"""Readiness against a database that never answers (a firewall that drops, not refuses)."""

from __future__ import annotations

import socket
import threading

import pytest

from mwl.operations.health import Readiness, database_readiness
from mwl.store.engine import make_engine

# It listens on a loopback socket (the silent "database").
pytestmark = pytest.mark.e2e


def test_a_silent_database_is_reported_unready_within_the_connect_timeout():
    # A listener that accepts the TCP connection and then says nothing, as a server
    # behind a packet-dropping firewall looks once the kernel's SYN backlog answered.
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(silent.accept()[0])
        except OSError:
            return

    threading.Thread(target=accept, daemon=True).start()
    engine = make_engine(f"postgresql://mwl@127.0.0.1:{silent.getsockname()[1]}/mwl")
    found: list[Readiness] = []
    asked = threading.Thread(target=lambda: found.append(database_readiness(engine)), daemon=True)
    try:
        asked.start()
        # Bounded wait: without a connect timeout the check would still hang here.
        asked.join(timeout=30)
        assert not asked.is_alive(), "readiness still waits for a silent database"
        (readiness,) = found
        assert not readiness.ready and readiness.database == "unavailable"
    finally:
        silent.close()
        for connection in held:
            connection.close()
        engine.dispose()
