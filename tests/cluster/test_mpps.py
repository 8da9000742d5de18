"""MPPS through HAProxy while nodes die: the RIS gets every status, the sender fails over.

The RIS sender runs on the node holding the ``ris-sender`` lease; killing it (-9)
must let another node take the lease and deliver what is left, and a message sent
again after a fail-over carries the same MSH-10, so the RIS can tell a repeat.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from pydicom.uid import generate_uid

from tests.cluster.harness import HOST, MllpLink, Orders, ack_code
from tests.mpps.conftest import (
    RisReceiver,
    hl7_field,
    n_create,
    n_create_dataset,
    n_set,
    n_set_dataset,
    reference,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

ORDERS = 40
NOW_SENDS = "this broker now sends the RIS messages of this database"
STANDING_BY = "another broker sends the RIS messages of this database; standing by"
HOUSEKEEPING_STANDBY = "another broker runs housekeeping on this database; standing by"
HOUSEKEEPING_NOW = "this broker now runs housekeeping on this database"
# The target: a lease fails over within 10 s of its holder's kill -9.
FAIL_OVER_SECONDS = 10.0
DUPLICATE = 0x0111  # N-CREATE again after a lost response: it was created


def retried(operation, accepted_on_retry: set[int], attempts: int = 20) -> int:
    """Run one MPPS operation until it gets an answer, as a modality retries.

    A lost association (node killed) is retried; on a retry, the failure status
    that says the first attempt was applied after all counts as done.
    """
    for attempt in range(attempts):
        try:
            code = operation().code
        except (AssertionError, OSError, RuntimeError):
            time.sleep(0.3)
            continue
        if code == 0 or (attempt and code in accepted_on_retry):
            return attempt
        raise AssertionError(f"MPPS answered 0x{code:04X} on attempt {attempt + 1}")
    raise AssertionError("no MPPS answer after every retry")


# The RIS takes this long to ACK, so that a kill often falls between a message sent
# and its ACK: the next holder then sends that message again.
RIS_ACK_DELAY_SECONDS = 0.4


def slow_aa(_payload: bytes) -> str:
    time.sleep(RIS_ACK_DELAY_SECONDS)
    return "AA"


@pytest.fixture
def ris():
    receiver = RisReceiver(code_for=slow_aa)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def test_mpps_statuses_reach_the_ris_while_nodes_die(start_cluster, ris):
    nodes = start_cluster(
        2,
        MWL_RIS_HOST=HOST,
        MWL_RIS_PORT=str(ris.port),
        MWL_RIS_POLL_INTERVAL_SECONDS="0.2",
        MWL_RIS_RETRY_INITIAL_SECONDS="0.2",
        MWL_RIS_RETRY_MAX_SECONDS="1",
        MWL_RIS_ACK_TIMEOUT_SECONDS="5",
    )
    first, second = nodes.nodes
    # node1 started first and holds the leases; node2 stands by.
    second.wait_line(STANDING_BY)
    second.wait_line(HOUSEKEEPING_STANDBY)
    orders = Orders()
    link = MllpLink(HOST, nodes.front.hl7)
    try:
        assert {ack_code(link.exchange(orders.make(i))) for i in range(ORDERS)} == {"AA"}
    finally:
        link.close()

    fail_overs: list[float] = []
    errors: list[BaseException] = []
    killed = threading.Event()

    def kill_the_holder() -> None:
        try:
            time.sleep(2)
            first.kill()
            gone = time.monotonic()
            killed.set()
            taken = second.wait_line(NOW_SENDS, timeout=FAIL_OVER_SECONDS + 20)
            housekeeping = second.wait_line(HOUSEKEEPING_NOW, timeout=FAIL_OVER_SECONDS + 20)
            fail_overs.extend([taken - gone, housekeeping - gone])
            first.start()
            first.wait_line(STANDING_BY)
            # The new holder dies too: the restarted first node takes over again.
            time.sleep(1)
            second.kill()
            gone = time.monotonic()
            fail_overs.append(first.wait_line(NOW_SENDS, timeout=FAIL_OVER_SECONDS + 20) - gone)
            second.start()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    killer = threading.Thread(target=kill_the_holder, daemon=True)
    killer.start()
    address = (HOST, nodes.front.dicom)
    done: list[int] = []
    retries = 0
    for i in range(ORDERS):
        if not killer.is_alive() and len(done) >= 6:
            break
        uid = generate_uid()
        ref = reference(orders.study_uid(i), orders.sps_id(i), orders.accession(i))
        retries += retried(
            lambda ref=ref, uid=uid: n_create(address, n_create_dataset(ref), uid), {DUPLICATE}
        )
        retries += retried(
            lambda uid=uid: n_set(address, n_set_dataset("COMPLETED"), uid), {0x0110}
        )
        done.append(i)
        time.sleep(0.2)
    killer.join(timeout=120)
    assert errors == []
    assert len(done) >= 6

    wanted = {(orders.placer(i), status) for i in done for status in ("IP", "CM")}
    wait_until(lambda: wanted <= set(ris.accepted_statuses()), what="every status at the RIS")
    control_ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for payload in list(ris.received):
        key = (hl7_field(payload, "ORC", 2), hl7_field(payload, "ORC", 5))
        control_ids[key].add(hl7_field(payload, "MSH", 10))
    assert {key: ids for key, ids in control_ids.items() if len(ids) != 1} == {}
    assert set(control_ids) == wanted
    assert [round(s, 1) for s in fail_overs if s > FAIL_OVER_SECONDS] == []
    print(
        f"\n{len(done)} MPPS, {retries} retried operations, {len(ris.received)} messages"
        f" at the RIS for {len(wanted)} statuses (repeats: {len(ris.received) - len(wanted)});"
        " lease fail-overs after kill -9:"
        f" {', '.join(f'{s:.2f} s' for s in fail_overs)}"
    )
