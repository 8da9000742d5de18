"""The watchdog end to end: a real ``mwl serve`` whose HL7 feed goes silent.

A real SMTP server (aiosmtpd) and an HTTP webhook receiver, both started here, get
the alert when it fires and when an HL7 order resolves it; Chromium shows it on the
day list in between; Prometheus's text format carries the firing count.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mwl.hl7.client import send_messages
from tests.browser import chromium, log_in, screenshot
from tests.serve import ADMIN_PASSWORD, Broker, broker_env, run_mwl, start_broker

aiosmtpd = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd (test extra) not installed")

pytestmark = [pytest.mark.e2e]

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7"
ORDER = (SAMPLES / "orm_o01_nw.hl7").read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
WEBHOOK_TOKEN = "webhook-secret-for-tests"


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[_Mailbox, int]]:
    box = _Mailbox()
    # aiosmtpd connects to its own port to see it serve: it needs the number first.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = aiosmtpd.Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def webhook() -> Iterator[tuple[list[tuple[str, dict[str, Any]]], int]]:
    received: list[tuple[str, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((self.headers.get("Authorization", ""), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield received, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture
def broker(
    database_url: str,
    tmp_path: Path,
    mailbox: tuple[_Mailbox, int],
    webhook: tuple[list[tuple[str, dict[str, Any]]], int],
) -> Iterator[Broker]:
    env = broker_env(
        database_url,
        MWL_WATCHDOG_INTERVAL_SECONDS="0.5",
        MWL_WATCHDOG_HOURS=json.dumps(["00-24"] * 7),
        # 3 seconds: the feed of a fresh broker is silent from the start.
        MWL_WATCHDOG_HL7_SILENT_MINUTES="0.05",
        MWL_WATCHDOG_SCANNER_SILENT_MINUTES="0",
        MWL_WATCHDOG_OVERDUE_MINUTES="0",
        MWL_WATCHDOG_MISSING_STATION="false",
        MWL_WATCHDOG_SMTP_HOST="127.0.0.1",
        MWL_WATCHDOG_SMTP_PORT=str(mailbox[1]),
        MWL_WATCHDOG_SMTP_FROM="mwl@example.org",
        MWL_WATCHDOG_SMTP_TO='["pacs-admin@example.org"]',
        MWL_WATCHDOG_WEBHOOK_URL=f"http://127.0.0.1:{webhook[1]}/hook",
        MWL_WATCHDOG_WEBHOOK_TOKEN=WEBHOOK_TOKEN,
    )
    added = run_mwl(["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD)
    assert added.returncode == 0, added.stderr
    started = start_broker(env, tmp_path)
    try:
        yield started
    finally:
        assert started.stop() == 0


def _metric(broker: Broker, kind: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.web_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f'mwl_watchdog_alerts_firing{{kind="{kind}"}}'):
            return float(line.split()[-1])
    raise AssertionError("mwl_watchdog_alerts_firing not exposed")


def test_a_silent_feed_is_noticed_shown_and_resolved(
    broker: Broker,
    mailbox: tuple[_Mailbox, int],
    webhook: tuple[list[tuple[str, dict[str, Any]]], int],
):
    box, hooks = mailbox[0], webhook[0]
    assert _until(lambda: bool(box.messages) and bool(hooks)), "\n".join(broker.output[-40:])
    (mail,) = box.messages
    assert mail["To"] == "pacs-admin@example.org"
    assert "FIRING" in mail["Subject"] and "no HL7 message" in mail["Subject"]
    (authorization, fired), *_ = hooks
    assert authorization == f"Bearer {WEBHOOK_TOKEN}"
    assert (fired["state"], fired["kind"], fired["subject"]) == ("firing", "hl7_silent", "HL7")
    assert _metric(broker, "hl7_silent") == 1

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        base = f"http://127.0.0.1:{broker.web_port}"
        log_in(page, base, "admin", ADMIN_PASSWORD)
        banner = page.get_by_role("alert").filter(has_text="No HL7 message for")
        banner.wait_for(timeout=15_000)
        screenshot(page, "watchdog-day-list")
        page.get_by_role("link", name="All alerts").click()
        assert page.locator('tr[data-alert="hl7_silent"]').count() == 1

    (ack,) = send_messages("127.0.0.1", broker.hl7_port, [ORDER])
    assert b"MSA|AA" in ack
    assert _until(lambda: any(h[1]["state"] == "resolved" for h in hooks))
    assert _until(lambda: any("RESOLVED" in m["Subject"] for m in box.messages))
    assert [h[1]["state"] for h in hooks] == ["firing", "resolved"]
    assert _metric(broker, "hl7_silent") == 0
