"""Manual status changes of a scheduled step, along :data:`mwl.orders.transitions.TRANSITIONS`.

A change into a status that the MPPS path reports to the RIS (``Settings.mpps_step_status``:
by default STARTED, COMPLETED, DISCONTINUED) queues the same outbox event as an MPPS
would, in the caller's transaction: the RIS hears of a step completed by hand exactly
as of one completed by the modality. Other changes (ARRIVED, READY, HELD, back to
SCHEDULED, CANCELED) are not sent, as none of them is sent by the automatic path.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from mwl.config import Settings
from mwl.domain import MppsStatus, SpsStatus, WorklistItem
from mwl.operations.audit import record_event
from mwl.operations.outbox import enqueue, ris_destination
from mwl.orders.edits import MPPS_NAMES_STEP, check_reason, load_step, performed_by_mpps
from mwl.orders.transitions import STATUS, TRANSITIONS, allowed_statuses, check_transition
from mwl.orders.values import N_, Checker
from mwl.store.models import utcnow
from mwl.worklist.matching import worklist_item
from mwl.worklist.mpps import status_event, step_status_table

#: The action recorded in the audit trail for a manual status change.
STATUS_ACTION = "status"


def reported_as(settings: Settings, target: SpsStatus) -> MppsStatus | None:
    """The MPPS status whose automatic path gives a step ``target``, or None (not reported).

    Read from the site's ``mpps_step_status`` table, so a manual change is reported
    exactly when the same change made by an MPPS would be.
    """
    for mpps_status, step_status in step_status_table(settings.mpps_step_status).items():
        if step_status is target:
            return mpps_status
    return None


def change_status(
    session: Session,
    sps_key: int,
    target: SpsStatus,
    username: str,
    reason: str,
    settings: Settings,
) -> tuple[WorklistItem, bool]:
    """Give step ``sps_key`` the status ``target`` by hand; audited; the caller commits.

    Parameters
    ----------
    session
        A writer unit of work.
    sps_key
        Database key of the scheduled procedure step.
    target
        The new status; it must follow the current one in :data:`TRANSITIONS`.
    username
        Who makes the change, for the audit trail.
    reason
        Why (required: a manual status change overrides the modality's report).
    settings
        ``mpps_step_status`` and the RIS destination (``ris_host``/``ris_port``).

    Returns
    -------
    tuple[WorklistItem, bool]
        The item as it is now, and whether an event for the RIS was queued.

    Raises
    ------
    UnknownStepError
        No step has this key.
    EditError
        The transition is not in the table, or the reason is missing or too long.
    """
    step, procedure, patient = load_step(session, sps_key)
    current = SpsStatus(step.status)
    check = Checker()
    reason = check_reason(check, reason)
    if not reason:
        check.add("reason", N_("Say why the status is changed by hand."))
    check_transition(check, current, target)
    if current is SpsStatus.CANCELED and not check.problems and performed_by_mpps(session, sps_key):
        check.add(STATUS, MPPS_NAMES_STEP)
    check.raise_if_any()
    step.status = target.value
    record_event(
        session,
        username,
        STATUS_ACTION,
        sps_key=step.id,
        subject=procedure.study_instance_uid,
        changes={STATUS: (current.value, target.value)},
        reason=reason,
    )
    mpps_status = reported_as(settings, target)
    destination = ris_destination(settings)
    queued = mpps_status is not None and destination is not None
    if mpps_status is not None and destination is not None:
        now = utcnow()
        event = status_event(procedure, [step], mpps_status, "", now, step.modality)
        enqueue(session, event, destination, now=now)
    session.flush()
    return worklist_item(step, procedure, patient), queued


__all__ = [
    "STATUS_ACTION",
    "TRANSITIONS",
    "allowed_statuses",
    "change_status",
    "reported_as",
]
