"""Fixtures of the HL7 adapter tests: the sample messages and a running listener."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.hl7.server import Hl7Server

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7"
POSTGRES_URL = os.environ.get("MWL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# A schema of this process's own: the shared ``mwl_test`` schema of tests/conftest.py
# is dropped and re-created by any other test run against the same server.
POSTGRES_SCHEMA = f"mwl_hl7_{os.getpid()}"


@functools.cache
def _postgres_unavailable() -> str | None:
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=2):
            pass
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # any failure means: skip, and say why
        return f"PostgreSQL at {url.host}:{url.port or 5432} not usable: {exc}"
    return None


def _run_admin(statement: str) -> None:
    engine = create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL (a schema of our own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mwl.db'}"
        return
    reason = _postgres_unavailable()
    if reason:
        pytest.skip(reason)
    _run_admin(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE")
    _run_admin(f"CREATE SCHEMA {POSTGRES_SCHEMA}")
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    url = url.update_query_dict({"options": f"-csearch_path={POSTGRES_SCHEMA}"})
    yield url.render_as_string(hide_password=False)
    _run_admin(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE")


def sample(name: str) -> bytes:
    """The bytes of ``samples/hl7/<name>``."""
    return (SAMPLES / name).read_bytes()


def all_samples() -> dict[str, bytes]:
    """Every sample message by file name."""
    return {path.name: path.read_bytes() for path in sorted(SAMPLES.glob("*.hl7"))}


def replace_field(message: bytes, segment: bytes, position: int, value: bytes) -> bytes:
    """``message`` with SEG-n (MSH numbering honoured) set to ``value``."""
    lines = message.split(b"\r")
    for index, line in enumerate(lines):
        if line.startswith(segment + b"|"):
            fields = line.split(b"|")
            n = position - 1 if segment == b"MSH" else position
            fields += [b""] * (n + 1 - len(fields))
            fields[n] = value
            lines[index] = b"|".join(fields)
            return b"\r".join(lines)
    raise AssertionError(f"no {segment!r} segment")


def drop_segment(message: bytes, segment: bytes) -> bytes:
    """``message`` without its ``segment`` lines."""
    return b"\r".join(line for line in message.split(b"\r") if not line.startswith(segment + b"|"))


@pytest.fixture
def hl7_server(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Hl7Server]:
    """A listener on an ephemeral loopback port, stopped after the test."""
    server = Hl7Server(settings, session_factory)
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (bounded by ``limit`` seconds)."""
    sock.settimeout(limit)
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
