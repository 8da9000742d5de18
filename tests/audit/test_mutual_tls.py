"""An IHE secure node's audit channel is mutual TLS: without a client certificate the
repository refuses the broker, and the queue keeps every message until it may send."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mwl.audit import messages as m
from mwl.audit import queue
from mwl.audit.sender import AuditSender
from mwl.config import Settings
from tests.audit.rsyslog import Rsyslog
from tests.certificates import Issued, issue, make_ca
from tests.peers import OPENSSL, RSYSLOGD

pytestmark = [pytest.mark.e2e, RSYSLOGD.required, OPENSSL.required]

SOURCE = m.Source("MWL-TEST")


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Issued, Issued]:
    ca = make_ca(tmp_path / "pki", "ca")
    return ca, issue(ca, tmp_path / "pki", "broker", server=False)


@pytest.fixture
def syslog(tmp_path: Path, pki: tuple[Issued, Issued]) -> Iterator[Rsyslog]:
    ca, _ = pki
    repository = Rsyslog(tmp_path / "rsyslog", issue(ca, tmp_path / "pki", "repo", server=True), ca)
    repository.folder.mkdir()
    repository.start()
    try:
        yield repository
    finally:
        repository.stop()


def _pending(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return queue.pending(session)


def test_without_a_client_certificate_nothing_is_accepted_and_nothing_is_lost(
    settings: Settings,
    session_factory: sessionmaker[Session],
    syslog: Rsyslog,
    pki: tuple[Issued, Issued],
    caplog: pytest.LogCaptureFixture,
):
    ca, client = pki
    tls = dataclasses.replace(
        settings,
        audit_syslog_host="127.0.0.1",
        audit_syslog_port=syslog.tcp_port,
        audit_syslog_transport="tls",
        audit_syslog_ca=str(ca.cert),
    )
    with session_factory.begin() as session:
        for start in (True, False, True):
            queue.enqueue(session, m.application_activity(SOURCE, start=start))
    anonymous = AuditSender(tls, session_factory, retry_initial_seconds=0.2, retry_max_seconds=1)
    anonymous.start()
    try:
        # Long enough for several rounds, each refused by the repository's certvalid check.
        time.sleep(6)
    finally:
        anonymous.shutdown()
    assert syslog.messages() == []
    assert _pending(session_factory) == 3
    refused = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    # One warning for the outage, not one per retry.
    assert len(refused) == 1 and "client certificate" in refused[0].getMessage()

    with_certificate = dataclasses.replace(
        tls, audit_syslog_cert=str(client.cert), audit_syslog_key=str(client.key)
    )
    sender = AuditSender(with_certificate, session_factory, retry_initial_seconds=0.2)
    sender.start()
    try:
        # The clean stop above made the unconfirmed messages due at once, not held.
        deadline = time.monotonic() + 30
        while _pending(session_factory) and time.monotonic() < deadline:
            time.sleep(0.25)
    finally:
        sender.shutdown()
    assert _pending(session_factory) == 0
    received = syslog.wait_for(lambda found: len(found) >= 3)
    assert [r.event_types() for r in received] == [["110120"], ["110121"], ["110120"]]
