"""SQLite writers of one process take turns on a lock instead of SQLite's busy handler."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import event, text

from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import AuditEvent
from tests.databases import migrated_sqlite_url


@pytest.fixture
def sqlite_engine(tmp_path: Path):
    engine = make_engine(migrated_sqlite_url(tmp_path))
    yield engine
    engine.dispose()


def _audit(action: str) -> AuditEvent:
    return AuditEvent(username="test", action=action, subject="writer-turns", changes="{}")


def _actions(engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT action FROM audit_event WHERE subject = 'writer-turns' ORDER BY id")
            ).scalars()
        )


def test_a_second_writer_waits_for_the_first_to_commit(sqlite_engine) -> None:
    writers = make_session_factory(sqlite_engine, writer=True)
    # The order in which the two threads begin and commit, as the database sees it.
    seen: list[tuple[str, str]] = []

    @event.listens_for(sqlite_engine, "before_cursor_execute")
    def statement(conn, cursor, sql, *_args) -> None:
        if sql == "BEGIN IMMEDIATE":
            seen.append((threading.current_thread().name, sql))

    @event.listens_for(sqlite_engine, "commit")
    def commit(conn) -> None:
        seen.append((threading.current_thread().name, "COMMIT"))

    first_in = threading.Event()
    second_started = threading.Event()
    second_done = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            first_in.wait(10)
            second_started.set()
            with writers.begin() as session:
                session.add(_audit("second"))
            second_done.set()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=second, name="second")
    thread.start()
    with writers.begin() as session:
        session.add(_audit("first"))
        session.flush()
        first_in.set()
        assert second_started.wait(10)
        # The second writer is queued behind this one, not failed.
        assert not second_done.wait(0.3)
    thread.join(10)
    assert not thread.is_alive()
    assert errors == []
    assert _actions(sqlite_engine) == ["first", "second"]
    # The second writer did not even ask SQLite for the write lock (where it would
    # have slept in the busy handler) before the first one had committed.
    first = threading.main_thread().name
    assert seen == [
        (first, "BEGIN IMMEDIATE"),
        (first, "COMMIT"),
        ("second", "BEGIN IMMEDIATE"),
        ("second", "COMMIT"),
    ]


def test_the_turn_is_given_back_after_a_rollback(sqlite_engine) -> None:
    writers = make_session_factory(sqlite_engine, writer=True)
    with pytest.raises(RuntimeError):
        with writers.begin() as session:
            session.add(_audit("rolled back"))
            session.flush()
            raise RuntimeError("the unit of work fails")
    done = threading.Event()

    def next_writer() -> None:
        with writers.begin() as session:
            session.add(_audit("after"))
        done.set()

    thread = threading.Thread(target=next_writer)
    thread.start()
    thread.join(10)
    assert done.is_set()
    assert _actions(sqlite_engine) == ["after"]


def test_readers_do_not_wait_for_a_writer(sqlite_engine) -> None:
    writers = make_session_factory(sqlite_engine, writer=True)
    readers = make_session_factory(sqlite_engine)
    read = threading.Event()

    def reader() -> None:
        with readers() as session:
            session.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
        read.set()

    with writers.begin() as session:
        session.add(_audit("writing"))
        session.flush()
        thread = threading.Thread(target=reader)
        thread.start()
        assert read.wait(10)
    thread.join(10)
