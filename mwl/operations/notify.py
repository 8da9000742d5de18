"""Watchdog notifications: an e-mail through the site's SMTP relay, a JSON webhook.

Both are optional and both carry the same facts (state, kind, subject, summary,
times, the broker's name); neither carries patient data. A channel that fails is
logged once until it works again; the watchdog sends the alert again next round.
"""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
import threading
import urllib.error
import urllib.request
from email.message import EmailMessage

from mwl.config import Settings
from mwl.operations.watchdog import Alert

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
_failing: set[str] = set()
_lock = threading.Lock()


def _report(channel: str, ok: bool, error: str = "") -> bool:
    with _lock:
        if ok and channel in _failing:
            _failing.discard(channel)
            logger.info("watchdog %s works again", channel)
        elif not ok and channel not in _failing:
            _failing.add(channel)
            logger.warning("watchdog %s failed (%s); alerts are sent again later", channel, error)
    return ok


def payload(settings: Settings, alert: Alert) -> dict[str, object]:
    """What the webhook receives (and the e-mail says)."""
    return {
        "source": settings.audit_source_id or socket.gethostname(),
        "state": alert.state,
        "kind": alert.kind,
        "subject": alert.subject,
        "summary": alert.summary,
        "fired_at": alert.fired_at.isoformat() + "Z",
        "resolved_at": alert.resolved_at.isoformat() + "Z" if alert.resolved_at else None,
        "details": alert.details,
    }


def send_email(settings: Settings, alert: Alert) -> bool:
    """One e-mail to ``watchdog_smtp_to``; True when the relay accepted it."""
    facts = payload(settings, alert)
    message = EmailMessage()
    message["From"] = settings.watchdog_smtp_from
    message["To"] = ", ".join(settings.watchdog_smtp_to)
    message["Subject"] = f"[mwl {facts['source']}] {alert.state.upper()}: {alert.summary}"
    lines = [f"{name}: {value}" for name, value in facts.items() if name != "details"]
    message.set_content("\n".join(lines) + "\n")
    try:
        with smtplib.SMTP(
            settings.watchdog_smtp_host, settings.watchdog_smtp_port, timeout=TIMEOUT_SECONDS
        ) as smtp:
            if settings.watchdog_smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.watchdog_smtp_username:
                smtp.login(settings.watchdog_smtp_username, settings.watchdog_smtp_password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        return _report("e-mail", False, type(exc).__name__)
    return _report("e-mail", True)


def send_webhook(settings: Settings, alert: Alert) -> bool:
    """One JSON POST to ``watchdog_webhook_url``; True for a 2xx answer."""
    headers = {"Content-Type": "application/json", "User-Agent": "mwl-watchdog"}
    if settings.watchdog_webhook_token:
        headers["Authorization"] = f"Bearer {settings.watchdog_webhook_token}"
    request = urllib.request.Request(
        settings.watchdog_webhook_url,
        data=json.dumps(payload(settings, alert)).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            ok = 200 <= response.status < 300
    except urllib.error.HTTPError as exc:
        exc.close()
        return _report("webhook", False, f"HTTP {exc.code}")
    except OSError as exc:
        return _report("webhook", False, type(exc).__name__)
    return _report("webhook", ok, "" if ok else "not 2xx")


def notify(settings: Settings, alert: Alert) -> bool:
    """Send ``alert`` on every channel set up; True when all took it (or none is set)."""
    ok = True
    if settings.watchdog_smtp_host:
        ok = send_email(settings, alert) and ok
    if settings.watchdog_webhook_url:
        ok = send_webhook(settings, alert) and ok
    return ok
