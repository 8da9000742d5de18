"""Singleton leases (mwl/store/leases.py): one holder; lifetime and keepalive on PostgreSQL.

The advisory locks are per database, not per schema: each test names its lease
uniquely so that parallel test processes on the shared server do not meet.
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from mwl.store.leases import SingletonLease

WAIT_S = 20


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def test_one_holder_at_a_time_and_release_hands_over(engine: Engine):
    name = _name()
    first, second = SingletonLease(engine, name), SingletonLease(engine, name)
    try:
        assert first.acquire() and first.held
        assert first.acquire()  # renewing
        assert first.confirm()
        if engine.url.get_backend_name() == "sqlite" and engine.url.database in (None, ":memory:"):
            return
        assert not second.acquire() and not second.held
        first.release()
        assert not first.held
        assert second.acquire()
    finally:
        first.release()
        second.release()


def _postgres(engine: Engine) -> None:
    if engine.url.get_backend_name() != "postgresql":
        pytest.skip("PostgreSQL session settings")


def test_the_lease_connection_carries_keepalive_and_lifetime(engine: Engine):
    _postgres(engine)
    lease = SingletonLease(engine, _name(), keepalive_seconds=7, lifetime_seconds=12)
    try:
        assert lease.acquire()
        connection = lease._connection
        assert connection is not None
        shown = {
            name: connection.scalar(text(f"SHOW {name}"))
            for name in (
                "idle_session_timeout",
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
            )
        }
        connection.commit()
        assert shown == {
            "idle_session_timeout": "12s",
            "tcp_keepalives_idle": "7",
            "tcp_keepalives_interval": "7",
            "tcp_keepalives_count": "3",
            "tcp_user_timeout": "12000",  # milliseconds, shown without a unit
        }
        # The broker's own pool is not touched: its sessions keep the defaults.
        with engine.connect() as pooled:
            assert pooled.scalar(text("SHOW idle_session_timeout")) == "0"
    finally:
        lease.release()


@pytest.mark.slow  # waits out a 3 s lifetime
def test_a_holder_that_stops_renewing_loses_the_lease_after_its_lifetime(engine: Engine):
    _postgres(engine)
    name = _name()
    hung = SingletonLease(engine, name, lifetime_seconds=3)
    other = SingletonLease(engine, name, lifetime_seconds=3)
    try:
        assert hung.acquire()
        # What SIGSTOP does to the whole process: the renewing thread stops.
        hung._stop_renewing.set()
        assert hung._renewer is not None
        hung._renewer.join(5)
        stopped = time.monotonic()
        assert not other.acquire()
        while not other.acquire():
            assert time.monotonic() - stopped < WAIT_S, "the lease did not fail over"
            time.sleep(0.2)
        assert time.monotonic() - stopped >= 2.5  # not before the lifetime
        # Woken up, the old holder finds its connection ended and stands by.
        assert not hung.confirm()
        assert not hung.acquire()
        assert not hung.held
        assert other.confirm()
    finally:
        hung.release()
        other.release()


@pytest.mark.slow  # holds a 3 s lease for 4.5 s
def test_a_renewing_holder_keeps_the_lease_beyond_its_lifetime(engine: Engine):
    _postgres(engine)
    name = _name()
    holder = SingletonLease(engine, name, lifetime_seconds=3)
    other = SingletonLease(engine, name, lifetime_seconds=3)
    try:
        assert holder.acquire()
        time.sleep(4.5)  # only the renewing thread speaks on the connection meanwhile
        assert holder.confirm()
        assert not other.acquire()
    finally:
        holder.release()
        other.release()


def test_each_schema_has_its_own_leases_and_public_keeps_the_old_key():
    import hashlib

    from mwl.store.leases import lock_key

    old = int.from_bytes(hashlib.sha256(b"mwl:ris-sender").digest()[:8], "big", signed=True)
    assert lock_key("ris-sender", "public") == old == lock_key("ris-sender", None)
    assert lock_key("ris-sender", "site_a") != lock_key("ris-sender", "site_b") != old


def test_brokers_of_two_schemas_each_hold_their_lease(engine: Engine, tmp_path):
    _postgres(engine)
    from sqlalchemy.engine import make_url

    from mwl.store.engine import make_engine

    # The same database, another schema: another installation, not a second holder.
    other_url = make_url(str(engine.url.render_as_string(hide_password=False))).update_query_dict(
        {"options": "-csearch_path=placeholder"}
    )
    schema = f"mwl_lease_{uuid.uuid4().hex[:8]}"
    other_url = other_url.update_query_dict({"options": f"-csearch_path={schema}"})
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    other = make_engine(other_url.render_as_string(hide_password=False))
    name = _name()
    here, there = SingletonLease(engine, name), SingletonLease(other, name)
    try:
        assert here.acquire()
        assert there.acquire()
        assert not SingletonLease(engine, name).acquire()
    finally:
        here.release()
        there.release()
        other.dispose()
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}"'))
