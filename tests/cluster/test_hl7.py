"""HL7 through HAProxy while nodes die, and one message sent to two nodes at once.

The invariants are those of a RIS that resends what it got no AA for: every
AA'd order is stored exactly once, every order without an ACK is stored once or
not at all, and its resend is answered AA (with the original ACK when the first
one was stored after all).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from mwl.store.engine import make_engine
from mwl.store.models import Hl7Message, RequestedProcedure
from tests.cluster.harness import HOST, MllpLink, Orders, Outcome, ack_code, send_until

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

SENDERS = 4
KILLS = 3
# A node is killed this long after the previous one is back: with its restart (5-10 s
# on an idle 2-core machine, up to 30 s on a loaded one) about 30-40 s in all.
KILL_EVERY_SECONDS = 3.0
DUPLICATE_ROUNDS = 20


def stored_accessions(url: str) -> Counter[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(RequestedProcedure.accession_number, func.count()).group_by(
                    RequestedProcedure.accession_number
                )
            ).all()
    finally:
        engine.dispose()
    return Counter({accession: count for accession, count in rows})


def applied_control_ids(url: str) -> Counter[str]:
    """MSH-10 -> how many log entries say it was applied (AA, not answered as a resend)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Hl7Message.message_control_id, func.count())
                .where(Hl7Message.outcome == "AA", Hl7Message.error == "")
                .group_by(Hl7Message.message_control_id)
            ).all()
    finally:
        engine.dispose()
    return Counter({control_id: count for control_id, count in rows})


def accepted_acks(url: str) -> dict[str, list[bytes]]:
    """MSH-10 -> the ACKs of every AA'd log entry of that message (resends included)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Hl7Message.message_control_id, Hl7Message.ack)
                .where(Hl7Message.outcome == "AA")
                .order_by(Hl7Message.id)
            ).all()
    finally:
        engine.dispose()
    acks: dict[str, list[bytes]] = {}
    for control_id, ack in rows:
        acks.setdefault(control_id, []).append(ack or b"")
    return acks


def test_every_acked_order_is_stored_once_while_nodes_are_killed(start_cluster, cluster_database):
    nodes = start_cluster(2)
    orders = Orders()
    outcome = Outcome()
    stop = threading.Event()
    senders = [
        threading.Thread(
            target=send_until, args=(HOST, nodes.front.hl7, orders, stop, outcome), daemon=True
        )
        for _ in range(SENDERS)
    ]
    for sender in senders:
        sender.start()
    try:
        for kill in range(KILLS):
            time.sleep(KILL_EVERY_SECONDS)
            victim = nodes.nodes[kill % len(nodes.nodes)]
            victim.kill()
            victim.start()
            assert nodes.haproxy is not None
            nodes.haproxy.wait_status(victim.name, "UP")
        time.sleep(KILL_EVERY_SECONDS)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
    acked = {i for i, code in outcome.acked.items() if code == "AA"}
    unanswered = outcome.lost | {i for i, code in outcome.acked.items() if code != "AA"}
    assert len(acked) > 50, f"only {len(acked)} orders went through"

    stored = stored_accessions(cluster_database)
    assert [a for a, n in stored.items() if n > 1] == []
    assert [i for i in acked if stored[orders.accession(i)] != 1] == []
    assert [i for i in unanswered if stored[orders.accession(i)] not in (0, 1)] == []

    # The RIS resends what it got no AA for: AA, and the original ACK where it was stored.
    before = accepted_acks(cluster_database)
    link = MllpLink(HOST, nodes.front.hl7)
    try:
        answers = {i: link.exchange(orders.make(i)) for i in sorted(unanswered)}
    finally:
        link.close()
    assert {i: ack_code(a) for i, a in answers.items() if ack_code(a) != "AA"} == {}
    for i, answer in answers.items():
        original = before.get(orders.control_id(i))
        if original:
            assert answer == original[0], f"order {i}: not the original ACK"
    stored = stored_accessions(cluster_database)
    assert [a for a, n in stored.items() if n > 1] == []
    assert [i for i in acked | unanswered if stored[orders.accession(i)] != 1] == []
    applied = applied_control_ids(cluster_database)
    assert [c for c, n in applied.items() if n > 1] == []
    assert [i for i in acked | unanswered if applied[orders.control_id(i)] != 1] == []
    print(
        f"\n{len(acked)} AA, {len(unanswered)} unanswered"
        f" ({sum(1 for i in unanswered if orders.control_id(i) in before)} stored), {KILLS} kills"
    )


def test_one_message_sent_to_two_nodes_at_once_is_applied_once(start_cluster, cluster_database):
    nodes = start_cluster(2, balancer=False)
    orders = Orders()
    links = [MllpLink(HOST, node.hl7_port) for node in nodes.nodes]
    answers: list[list[bytes]] = [[] for _ in links]
    try:
        for i in range(DUPLICATE_ROUNDS):
            message = orders.make(i)
            barrier = threading.Barrier(len(links))

            def send(
                k: int, message: bytes = message, barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait(timeout=10)
                answers[k].append(links[k].exchange(message))

            threads = [threading.Thread(target=send, args=(k,)) for k in range(len(links))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
    finally:
        for link in links:
            link.close()

    assert [len(a) for a in answers] == [DUPLICATE_ROUNDS] * len(links)
    stored = stored_accessions(cluster_database)
    assert {orders.accession(i): stored[orders.accession(i)] for i in range(DUPLICATE_ROUNDS)} == {
        orders.accession(i): 1 for i in range(DUPLICATE_ROUNDS)
    }
    applied = applied_control_ids(cluster_database)
    assert {
        orders.control_id(i): applied[orders.control_id(i)] for i in range(DUPLICATE_ROUNDS)
    } == {orders.control_id(i): 1 for i in range(DUPLICATE_ROUNDS)}
    logged = accepted_acks(cluster_database)
    for i in range(DUPLICATE_ROUNDS):
        first, second = answers[0][i], answers[1][i]
        assert ack_code(first) == ack_code(second) == "AA"
        # Both got the original ACK: the one stored with the message that was applied.
        assert first == second == logged[orders.control_id(i)][0], f"round {i}"
