"""/messages and /scanners: the HL7 log and the modalities that query, read only."""

from __future__ import annotations

import datetime as dt

import pytest

from mwl.operations.activity import recent_messages, scanner_activity
from mwl.store.models import Hl7Message, QueryLogEntry, utcnow

RAW = b"MSH|^~\\&|RIS|HOSP|MWL|RAD|20261121090000||ORM^O01|CTRL-1|P|2.5.1\rPID|||P1||Doe^Jane\r"
ACK = b"MSH|^~\\&|MWL|RAD|RIS|HOSP|20261121090001||ACK^O01|A-1|P|2.5.1\rMSA|AA|CTRL-1\r"


@pytest.fixture
def messages(session_factory) -> list[int]:
    """Two logged messages: one accepted, one rejected; returns their keys."""
    now = utcnow()
    with session_factory.begin() as session:
        good = Hl7Message(
            received_at=now - dt.timedelta(minutes=5),
            peer_address="10.1.2.3",
            sending_application="RIS",
            sending_facility="HOSP",
            message_control_id="CTRL-1",
            message_type="ORM^O01",
            raw=RAW,
            outcome="AA",
            ack=ACK,
            processed_at=now - dt.timedelta(minutes=5),
        )
        bad = Hl7Message(
            received_at=now,
            peer_address="10.1.2.3",
            sending_application="RIS",
            message_control_id="CTRL-2",
            message_type="ADT^A01",
            raw=b"MSH|^~\\&|RIS|HOSP|||||ADT^A01|CTRL-2|P|2.5.1\r",
            outcome="AR",
            error="unsupported message type ADT^A01",
        )
        session.add_all([good, bad])
        session.flush()
        return [good.id, bad.id]


def test_message_log_lists_newest_first(logged_in, messages):
    response = logged_in.get("/messages")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert page.index("CTRL-2") < page.index("CTRL-1")
    for text in ("ORM^O01", "ADT^A01", "RIS / HOSP", ">AA<", ">AR<", "unsupported message type"):
        assert text in page
    assert f'href="/messages/{messages[0]}"' in page


def test_message_detail_shows_raw_text_and_ack(logged_in, messages):
    page = logged_in.get(f"/messages/{messages[0]}").get_data(as_text=True)
    assert "PID|||P1||Doe^Jane" in page
    assert "MSA|AA|CTRL-1" in page
    rejected = logged_in.get(f"/messages/{messages[1]}").get_data(as_text=True)
    assert "No acknowledgement was sent." in rejected
    assert "unsupported message type ADT^A01" in rejected


def test_unknown_message_is_404(logged_in, messages):
    response = logged_in.get(f"/messages/{max(messages) + 100}")
    assert response.status_code == 404
    assert "no message with this number" in response.get_data(as_text=True)


def test_message_paging(session_factory, messages):
    with session_factory() as session:
        newest = recent_messages(session, limit=1)
        assert [m.message_control_id for m in newest] == ["CTRL-2"]
        older = recent_messages(session, limit=1, before_key=newest[0].key)
        assert [m.message_control_id for m in older] == ["CTRL-1"]
        assert recent_messages(session, before_key=older[0].key) == []


def test_empty_logs(logged_in):
    assert "No HL7 message has been received" in logged_in.get("/messages").get_data(as_text=True)
    assert "No modality has queried" in logged_in.get("/scanners").get_data(as_text=True)


@pytest.fixture
def queries(session_factory) -> dt.datetime:
    """Query log: CT01 twice today (one failed) and once yesterday, MR01 once yesterday."""
    since = dt.datetime(2026, 11, 21, 0, 0)
    entries = [
        ("CT01", since + dt.timedelta(hours=8), "10.0.0.5", 3, 0x0000),
        ("CT01", since + dt.timedelta(hours=9), "10.0.0.6", 0, 0xC000),
        ("CT01", since - dt.timedelta(hours=1), "10.0.0.5", 7, 0x0000),
        ("MR01", since - dt.timedelta(hours=2), "10.0.0.9", 2, 0x0000),
    ]
    with session_factory.begin() as session:
        for ae, at, peer, matches, status in entries:
            session.add(
                QueryLogEntry(
                    received_at=at,
                    calling_ae_title=ae,
                    called_ae_title="MWL",
                    peer_address=peer,
                    matches=matches,
                    status=status,
                )
            )
    return since


def test_scanner_activity_counts_since_the_given_time(session_factory, queries):
    with session_factory() as session:
        ct, mr = scanner_activity(session, queries)
    assert ct.calling_ae_title == "CT01"
    assert ct.last_seen == queries + dt.timedelta(hours=9)
    assert ct.last_peer_address == "10.0.0.6"
    assert (ct.queries_since, ct.matches_since, ct.failures_since, ct.total_queries) == (2, 3, 1, 3)
    assert mr.calling_ae_title == "MR01"
    assert (mr.queries_since, mr.matches_since, mr.failures_since, mr.total_queries) == (0, 0, 0, 1)


def test_scanners_page_lists_each_calling_ae(logged_in, queries):
    page = logged_in.get("/scanners").get_data(as_text=True)
    assert '<th scope="row">CT01</th>' in page
    assert '<th scope="row">MR01</th>' in page
    assert page.index("CT01") < page.index("MR01")  # most recently seen first
    assert "2 calling AE titles seen" in page
