"""The one table of step status transitions a person may make on the page.

docs/admin-guide.md ("Changing the status by hand") prints the same table;
``tests/core/test_status_transitions.py`` checks that the two agree. Manual status
changes (:mod:`mwl.orders.status`), cancel and restore (:mod:`mwl.orders.edits`)
all follow it.
"""

from __future__ import annotations

from collections.abc import Mapping

from mwl.domain import SpsStatus
from mwl.orders.values import N_, Checker

# The audit trail and the errors name the status by the stored field's name.
STATUS = "scheduled_procedure_step_status"

S = SpsStatus

#: Step status -> the statuses a person may change it to on the page.
TRANSITIONS: Mapping[SpsStatus, tuple[SpsStatus, ...]] = {
    S.SCHEDULED: (S.ARRIVED, S.READY, S.STARTED, S.HELD, S.CANCELED),
    S.ARRIVED: (S.SCHEDULED, S.READY, S.STARTED, S.HELD, S.CANCELED),
    S.READY: (S.SCHEDULED, S.ARRIVED, S.STARTED, S.HELD, S.CANCELED),
    S.HELD: (S.SCHEDULED, S.CANCELED),
    S.STARTED: (S.DEPARTED, S.COMPLETED, S.DISCONTINUED),
    S.DEPARTED: (S.COMPLETED, S.DISCONTINUED),
    S.COMPLETED: (),
    S.DISCONTINUED: (),
    S.CANCELED: (S.SCHEDULED, S.ARRIVED, S.READY, S.HELD),
}


def allowed_statuses(current: SpsStatus) -> tuple[SpsStatus, ...]:
    """The statuses step status ``current`` may be changed to by hand, in table order."""
    return TRANSITIONS.get(current, ())


def check_transition(check: Checker, current: SpsStatus, target: SpsStatus) -> None:
    """Record a problem on ``check`` when the table does not allow ``current`` -> ``target``."""
    if target == current:
        check.add(STATUS, N_("The step is %(status)s already."), status=current.value)
    elif target not in allowed_statuses(current):
        allowed = ", ".join(s.value for s in allowed_statuses(current)) or "—"
        check.add(
            STATUS,
            N_("A %(status)s step cannot become %(target)s (it may become: %(allowed)s)."),
            status=current.value,
            target=target.value,
            allowed=allowed,
        )


def refuse_unless_allowed(current: SpsStatus, target: SpsStatus) -> None:
    """Raise :class:`EditError` when the table does not allow ``current`` -> ``target``."""
    check = Checker()
    check_transition(check, current, target)
    check.raise_if_any()
