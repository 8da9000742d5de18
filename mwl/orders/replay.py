"""The steps of one order before and after a re-run of its messages: what a preview shows.

An order is named by its identifiers (placer and filler order numbers, accession
numbers): every requested procedure holding any of them belongs to it. The snapshot
is each step's stored fields, as text; the difference is per step and field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mwl.domain import Code, Order
from mwl.operations.message_view import FieldChange, StepDifference
from mwl.store.models import Patient, RequestedProcedure, ScheduledProcedureStep
from mwl.worklist.fields import FIELDS
from mwl.worklist.matching import worklist_item

Snapshot = dict[str, tuple[int, dict[str, str]]]


@dataclass
class OrderIdentity:
    """The identifiers that make messages and procedures one order; grows along the chain."""

    placer: set[str] = field(default_factory=set)
    filler: set[str] = field(default_factory=set)
    accession: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, order: Order) -> OrderIdentity:
        """The identifiers an order message names (empty values are no identifier)."""
        identity = cls()
        identity.add(order)
        return identity

    def add(self, order: Order) -> None:
        """Take in the identifiers of another message of the same order."""
        for procedure in order.procedures:
            for values, value in (
                (self.placer, procedure.placer_order_number),
                (self.filler, procedure.filler_order_number),
                (self.accession, procedure.accession_number),
            ):
                if value:
                    values.add(value)

    def shares(self, order: Order) -> bool:
        """Whether ``order`` names any identifier of this order."""
        return any(
            p.placer_order_number in self.placer
            or p.filler_order_number in self.filler
            or p.accession_number in self.accession
            for p in order.procedures
            if p.placer_order_number or p.filler_order_number or p.accession_number
        )

    def names(self) -> tuple[str, ...]:
        """The identifiers as text, for the page."""
        return tuple(sorted(self.placer | self.filler | self.accession))

    def __bool__(self) -> bool:
        return bool(self.placer or self.filler or self.accession)


def _text(value: object) -> str:
    if isinstance(value, Code):
        return "^".join((value.value, value.scheme, value.meaning)).rstrip("^")
    if isinstance(value, tuple):
        return "\\".join(_text(v) for v in value)
    if hasattr(value, "isoformat"):
        return str(value.isoformat(sep=" "))
    return "" if value is None else str(value)


def snapshot(session: Session, identity: OrderIdentity) -> Snapshot:
    """Every step of the order, by ``accession / SPS ID``: its key and stored fields as text."""
    if not identity:
        return {}
    conditions = []
    if identity.placer:
        conditions.append(RequestedProcedure.placer_order_number.in_(identity.placer))
    if identity.filler:
        conditions.append(RequestedProcedure.filler_order_number.in_(identity.filler))
    if identity.accession:
        conditions.append(RequestedProcedure.accession_number.in_(identity.accession))
    rows = session.execute(
        select(ScheduledProcedureStep, RequestedProcedure, Patient)
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        .where(or_(*conditions))
        .order_by(ScheduledProcedureStep.id)
    ).all()
    found: Snapshot = {}
    for step, procedure, patient in rows:
        item = worklist_item(step, procedure, patient)
        order = item.accession_number or item.requested_procedure_id
        label = f"{order} / {item.scheduled_procedure_step_id}"
        found[label] = (step.id, {f.name: _text(getattr(item, f.name)) for f in FIELDS})
    return found


def differences(before: Snapshot, after: Snapshot) -> tuple[StepDifference, ...]:
    """Per step, what differs between two snapshots (steps only in one: created/removed)."""
    result = []
    for label in dict.fromkeys([*before, *after]):
        old, new = before.get(label), after.get(label)
        if old is None and new is not None:
            result.append(StepDifference(label, new[0], created=True, changes=_changes({}, new[1])))
        elif new is None and old is not None:
            result.append(StepDifference(label, old[0], removed=True, changes=_changes(old[1], {})))
        elif old is not None and new is not None and old[1] != new[1]:
            result.append(StepDifference(label, new[0], changes=_changes(old[1], new[1])))
    return tuple(result)


def _changes(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[FieldChange, ...]:
    names = dict.fromkeys([*old, *new])
    return tuple(
        FieldChange(name, old.get(name, ""), new.get(name, ""))
        for name in names
        if old.get(name, "") != new.get(name, "")
    )


def fingerprint(state: Snapshot, message_keys: Iterable[int]) -> str:
    """A short digest of the order's state and of the chain, to notice a change meanwhile."""
    text = json.dumps([sorted(state.items()), list(message_keys)], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
