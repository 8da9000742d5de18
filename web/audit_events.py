"""ATNA records of what the page and the API show and change: who looked at whom.

Privacy officers ask who read a patient's data, not only who changed it; IHE ATNA
records such a read as 110110 Patient Record with action R. Changes of settings,
users and tokens are 110113 Security Alerts. Nothing here runs while audit is off:
building a message costs more than the check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flask import request
from sqlalchemy.orm import Session

from mwl.audit import messages as audit_messages
from mwl.domain import WorklistItem
from mwl.operations.activity import MessageChange
from web.store import state, writer

# A refused token is audited at most once per address and minute: a script retrying
# with a revoked token must not turn each request into a queued message.
_REFUSAL_INTERVAL = 60.0
_refused_at: dict[str, float] = {}
_refused_lock = threading.Lock()


def _requestor(username: str) -> audit_messages.Participant:
    return audit_messages.Participant(username, True, address=request.remote_addr or "")


def _record_reads(username: str, patients: Sequence[tuple[str, str, str]], what: str) -> None:
    auditor = state().auditor
    if auditor is None or not auditor.enabled or not patients:
        return
    documents = audit_messages.patient_reads(
        auditor.source, _requestor(username), patients, what=what
    )
    # A read opens no transaction of its own: the audit record gets a short one.
    with writer().begin() as changes:
        for document in documents:
            auditor.record(changes, document)


def items_read(username: str, items: Iterable[WorklistItem], what: str) -> None:
    """``username`` was shown these steps' patient data (a page or an API answer)."""
    _record_reads(
        username,
        [(i.patient_id, i.study_instance_uid, i.accession_number) for i in items],
        what,
    )


def _first(dataset: Mapping[str, Any], tag: str) -> str:
    """A DICOM JSON attribute's first value; for an MPPS also from the scheduled step."""
    values = (dataset.get(tag) or {}).get("Value") or []
    if values:
        return str(values[0])
    for item in (dataset.get("00400270") or {}).get("Value") or []:  # Sched. Step Attributes
        found = (item.get(tag) or {}).get("Value") or []
        if found:
            return str(found[0])
    return ""


def json_datasets_read(username: str, datasets: Iterable[Mapping[str, Any]], what: str) -> None:
    """``username`` got these DICOM JSON datasets (DICOMweb): their patients were read."""
    studies = [
        (_first(ds, "00100020"), _first(ds, "0020000D"), _first(ds, "00080050")) for ds in datasets
    ]
    _record_reads(username, [s for s in studies if any(s)], what)


def message_read(username: str, changes: Iterable[MessageChange], what: str) -> None:
    """``username`` was shown an HL7 message: the patients it created or changed."""
    _record_reads(username, [(c.patient_id, "", c.accession_number) for c in changes], what)


def _record_change(
    session: Session,
    username: str,
    event_type: audit_messages.CodedValue,
    subject: audit_messages.ParticipantObject,
    text: str,
) -> None:
    auditor = state().auditor
    if auditor is None or not auditor.enabled:
        return
    auditor.record(
        session,
        audit_messages.security_change(
            auditor.source, event_type, _requestor(username), subject, text
        ),
    )


def settings_changed(session: Session, username: str, names: Sequence[str]) -> None:
    """In the change's transaction: ``username`` changed (or reset) these settings."""
    if not names:
        return
    _record_change(
        session,
        username,
        audit_messages.configuration_event(names),
        audit_messages.ParticipantObject(
            "settings", audit_messages.URI, "2", "13", name=", ".join(sorted(names))
        ),
        "settings changed: " + ", ".join(sorted(names)),
    )


def token_changed(session: Session, username: str, owner: str, text: str) -> None:
    """In the change's transaction: an API token of ``owner`` was created or revoked."""
    _record_change(
        session,
        username,
        audit_messages.USER_SECURITY_ATTRIBUTES_CHANGED,
        audit_messages.user_object(owner),
        text,
    )


def token_login(session: Session, username: str) -> None:
    """In the token-use transaction (at most once a minute per token): a bearer login."""
    auditor = state().auditor
    if auditor is None or not auditor.enabled:
        return
    auditor.record(
        session,
        audit_messages.user_authentication(
            auditor.source, username, request.remote_addr or "", login=True, success=True
        ),
    )


def token_refused() -> None:
    """An API request with an unknown or revoked token: a failed login (110114, outcome 4)."""
    auditor = state().auditor
    if auditor is None or not auditor.enabled:
        return
    address = request.remote_addr or ""
    now = time.monotonic()
    with _refused_lock:
        if now - _refused_at.get(address, -_REFUSAL_INTERVAL) < _REFUSAL_INTERVAL:
            return
        if len(_refused_at) > 10_000:
            _refused_at.clear()
        _refused_at[address] = now
    with writer().begin() as changes:
        auditor.record(
            changes,
            audit_messages.user_authentication(
                auditor.source, "(API token)", address, login=True, success=False
            ),
        )
