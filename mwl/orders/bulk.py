"""One change applied to many steps (the day list's bulk actions), each on its own.

Every step goes through the same core edit function as a change of that one step
(:mod:`mwl.orders.edits`), so each is checked, audited and has the same effects; a
step that refuses the change is rolled back alone (a savepoint) and reported, and
the others keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from mwl.domain import WorklistItem
from mwl.orders.edits import UnknownStepError
from mwl.orders.values import EditError

# A change of one step: (session, key, username, reason) -> the changed item.
StepChange = Callable[[Session, int, str, str], WorklistItem]
# Steps one bulk action may name: a full page of the day list.
BULK_MAX = 500


@dataclass
class BulkResult:
    """What a bulk change did: the items changed and, per refused key, why."""

    changed: list[WorklistItem] = field(default_factory=list)
    refused: dict[int, EditError | None] = field(default_factory=dict)  # None: no such step


def apply_to_steps(
    session: Session, keys: Iterable[int], change: StepChange, username: str, reason: str = ""
) -> BulkResult:
    """Apply ``change`` to each step of ``keys`` (once each, in order); the caller commits.

    Raises
    ------
    ValueError
        When more than :data:`BULK_MAX` keys are given.
    """
    unique = list(dict.fromkeys(keys))
    if len(unique) > BULK_MAX:
        raise ValueError(f"at most {BULK_MAX} steps at once, not {len(unique)}")
    result = BulkResult()
    for key in unique:
        try:
            with session.begin_nested():
                result.changed.append(change(session, key, username, reason))
        except UnknownStepError:
            result.refused[key] = None
        except EditError as error:
            result.refused[key] = error
    return result
