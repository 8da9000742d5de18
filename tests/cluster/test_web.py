"""The web page and the state it shares across nodes: sessions, login limits, live
settings, API tokens and the query log are in the database, so every node sees what
another did, at once or within the live settings' refresh.

The tests share one cluster (``shared_cluster``); each leaves the settings as it
found them and logs in as a user the others do not guess passwords for.
"""

from __future__ import annotations

import re
import time

import pytest
from pydicom.dataset import Dataset

from tests.cluster.harness import HOST, Browser, MllpLink, Orders, ack_code
from tests.scu import c_find
from tests.serve import ADMIN_PASSWORD, broker_env, run_mwl

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

# LiveSettings re-reads the page's values every 2 s; a node sees a change within that.
LIVE_WITHIN_SECONDS = 10.0
FREE_FAILURES = 5  # mwl.admin.login_limits.LoginPolicy.free_per_user


def logged_in(response) -> bool:
    return response.status_code == 200 and 'action="/logout"' in response.text


def test_a_session_holds_on_every_node_and_ends_on_all(shared_cluster):
    nodes = shared_cluster
    browser = Browser(nodes.web)
    assert browser.login("admin", ADMIN_PASSWORD).status_code == 302

    # Round robin per request: consecutive pages come from both nodes, logged in.
    pages = [browser.get("/") for _ in range(4)]
    assert all(logged_in(page) for page in pages)
    assert {page.headers["X-Mwl-Node"] for page in pages} == {"node1", "node2"}

    # The cookie, copied before logout, as an attacker who stole it would keep it.
    stolen = browser.http.cookies.copy()
    first, second = nodes.nodes
    page = browser.get("/", first.web)
    assert logged_in(page)
    assert browser.submit(page, "/logout", base=first.web).status_code == 302
    thief = Browser(nodes.web)
    thief.http.cookies.update(stolen)
    for node in nodes.nodes:
        answer = thief.get("/", node.web)
        assert answer.status_code == 302 and "/login" in answer.headers["Location"], node.name
    assert not logged_in(browser.get("/", second.web))


def test_wrong_passwords_spread_over_two_nodes_count_together(shared_cluster, tmp_path):
    nodes = shared_cluster
    # A user of this test's own: the other tests log in as admin from this address.
    added = run_mwl(
        ["user", "add", "guessed", "--role", "viewer"],
        broker_env(nodes.database_url),
        tmp_path,
        ADMIN_PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    guesser = Browser(nodes.nodes[0].web)
    for attempt in range(FREE_FAILURES):
        node = nodes.nodes[attempt % 2]
        answer = guesser.login("guessed", f"wrong {attempt}", node.web)
        assert answer.status_code == 200, (node.name, answer.status_code)
    # Three failures on one node and two on the other: five for the user, so the
    # next attempt from this address waits, on either node, even with the password.
    for node in nodes.nodes:
        answer = guesser.login("guessed", ADMIN_PASSWORD, node.web)
        assert answer.status_code == 429, node.name
        assert int(answer.headers["Retry-After"]) > 0


def wait_for_ack(port: int, message: bytes, wanted: str) -> float:
    """Send ``message`` until the ACK code is ``wanted``; the seconds it took."""
    started = time.monotonic()
    while True:
        link = MllpLink(HOST, port)
        try:
            code = ack_code(link.exchange(message))
        finally:
            link.close()
        if code == wanted:
            return time.monotonic() - started
        assert time.monotonic() - started < LIVE_WITHIN_SECONDS, f"still {code}, not {wanted}"
        time.sleep(0.2)


def test_live_settings_changed_on_one_node_apply_on_the_other(shared_cluster):
    nodes = shared_cluster
    first, second = nodes.nodes
    admin = Browser(first.web)
    assert admin.login("admin", ADMIN_PASSWORD).status_code == 302
    orders = Orders()

    page = admin.get("/admin/hl7")
    changed = admin.submit(page, "/admin/hl7", {"accepted_senders": "OTHERRIS|*"})
    assert changed.status_code == 302, changed.text
    # A message from RIS|HOSPITAL (the sample's sender) is now refused by node 2.
    refused_after = wait_for_ack(second.hl7_port, orders.make(0), "AR")

    page = admin.get("/admin/hl7")
    assert admin.submit(page, "/admin/hl7", {"accepted_senders": ""}).status_code == 302
    accepted_after = wait_for_ack(second.hl7_port, orders.make(1), "AA")
    print(f"\nnode 2 applied node 1's change after {refused_after:.1f} s, {accepted_after:.1f} s")


def test_a_token_revoked_on_one_node_is_refused_on_the_other_at_once(shared_cluster):
    nodes = shared_cluster
    first, second = nodes.nodes
    admin = Browser(first.web)
    assert admin.login("admin", ADMIN_PASSWORD).status_code == 302
    created = admin.submit(admin.get("/account/tokens"), "/account/tokens", {"name": "script"})
    if created.status_code == 302:
        created = admin.get(created.headers["Location"].removeprefix(first.web))
    token = re.search(r'id="token-value">([^<]+)<', created.text)
    assert token, created.text
    api = {"Authorization": f"Bearer {token[1]}"}
    script = Browser(second.web)
    assert script.get("/api/v1/items", headers=api).status_code == 200

    # The revoke button asks first (web.confirm); its page posts again with confirm=yes.
    asked = admin.submit(admin.get("/account/tokens"), "/revoke")
    assert asked.status_code == 200 and 'name="confirm"' in asked.text
    assert script.get("/api/v1/items", headers=api).status_code == 200  # not yet revoked
    revoked = admin.submit(asked, "/revoke")
    assert revoked.status_code in (200, 302)
    assert script.get("/api/v1/items", headers=api).status_code == 401
    assert Browser(first.web).get("/api/v1/items", headers=api).status_code == 401


def worklist_query(modality: str = "CT") -> Dataset:
    identifier = Dataset()
    identifier.PatientName = ""
    identifier.PatientID = ""
    identifier.AccessionNumber = ""
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = ""
    identifier.ScheduledProcedureStepSequence = [step]
    return identifier


def test_the_query_log_and_the_scanner_test_show_queries_answered_by_the_other_node(
    shared_cluster,
):
    nodes = shared_cluster
    orders = Orders()
    link = MllpLink(HOST, nodes.nodes[0].hl7_port)
    try:
        assert ack_code(link.exchange(orders.make(0))) == "AA"
    finally:
        link.close()

    for asked, shown, scanner in (
        (nodes.nodes[1], nodes.nodes[0], "CLUSTERB"),
        (nodes.nodes[0], nodes.nodes[1], "CLUSTERA"),
    ):
        matches, status = c_find(asked.dicom_port, worklist_query(), calling_ae=scanner)
        assert status == 0
        assert orders.accession(0) in {str(m.AccessionNumber) for m in matches}
        browser = Browser(shown.web)
        assert browser.login("admin", ADMIN_PASSWORD).status_code == 302
        assert scanner in browser.get("/scanners").text
        history = browser.get(f"/scanners/history?ae={scanner}")
        assert history.status_code == 200
        # "Test as this scanner", from the query the other node answered.
        tested = browser.submit(history, "/scanners/test")
        assert tested.status_code == 200, tested.text
        assert orders.accession(0) in tested.text, shown.name
