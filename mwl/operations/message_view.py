"""How a stored HL7 message is shown and what re-processing it did: types shared by adapters.

The HL7 adapter fills them (``mwl.hl7.describe``, ``mwl.hl7.reprocess``); the web page
renders them without importing the HL7 adapter. No patient data is logged here.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

# Outcomes after which a message may be run through the mapping again: the sender
# was told AE or AR, so nothing of it is on the worklist (RECEIVED is in progress,
# AA was applied; resend handling and idempotency cover those).
REPROCESSABLE_OUTCOMES = frozenset({"AE", "AR"})
# Audit action of a re-run (mwl.operations.audit), whose subject is reprocess_subject(key).
REPROCESS_ACTION = "reprocess"


def reprocess_subject(key: int) -> str:
    """The audit trail subject of logged message ``key``: ``hl7:<key>``."""
    return f"hl7:{key}"


@dataclass(frozen=True)
class ComponentView:
    """One component of one repetition of a field, unescaped.

    ``position`` is ``PID-5.1`` (first repetition) or ``PID-3[2].1`` (second);
    ``name`` the component's long name (``Family Name``), or "" when unknown.
    """

    position: str
    name: str
    value: str


@dataclass(frozen=True)
class FieldView:
    """One non-empty field of a segment.

    ``position`` is ``PID-5``; ``name`` the field's long name in the message's HL7
    version (``Patient Name``), or "" for fields no reference table knows (Z-segments);
    ``value`` the field as sent (delimiters and escapes kept); ``components`` the
    field split into repetitions and components, only when it has more than one.
    """

    position: str
    name: str
    value: str
    components: tuple[ComponentView, ...] = ()

    @property
    def label(self) -> str:
        """``PID-5 Patient Name`` (position alone when the name is unknown)."""
        return f"{self.position} {self.name}" if self.name else self.position


@dataclass(frozen=True)
class SegmentView:
    """One segment: its name, what the name stands for, its fields and its raw line."""

    name: str
    description: str  # "Patient Identification"; "" when unknown
    fields: tuple[FieldView, ...]
    raw: str


@dataclass(frozen=True)
class MessageView:
    """A message split for people: segments in order, or only its lines when unreadable.

    ``version`` is the HL7 version whose reference tables named the fields (the
    message's MSH-12 when known, else 2.5). ``problem`` says what was wrong with it
    (no MSH: ``segments`` is empty; bytes not valid in its charset: shown replaced);
    ``raw_lines`` always holds every line, so nothing received is hidden.
    """

    segments: tuple[SegmentView, ...]
    raw_lines: tuple[str, ...]
    version: str = ""
    problem: str = ""

    @property
    def readable(self) -> bool:
        """Whether there are segments to show (else only ``raw_lines``)."""
        return bool(self.segments)


class ReprocessRefusal(enum.Enum):
    """Why a message was not processed again (nothing was changed)."""

    NOT_FOUND = "not found"
    NOT_REJECTED = "not rejected"  # AA: it was applied already
    IN_PROGRESS = "in progress"  # RECEIVED: the listener is still at it, or died at it
    RESEND_ACCEPTED = "resend accepted"  # the sender resent it and that copy was taken
    DATABASE = "database"  # the database failed; try again


@dataclass(frozen=True)
class ReprocessOutcome:
    """What re-processing one logged message did.

    ``refusal`` is set when nothing was done (the outcomes are then equal); else
    ``outcome_after`` is the new outcome (``AA``, or ``AE``/``AR`` when it still
    fails, with ``error_after`` saying why) and ``summary`` what applying changed.
    """

    key: int
    outcome_before: str
    outcome_after: str
    error_before: str = ""
    error_after: str = ""
    summary: str = ""
    refusal: ReprocessRefusal | None = None

    @property
    def accepted(self) -> bool:
        """Whether the message was applied this time."""
        return self.refusal is None and self.outcome_after == "AA"


class ChainRefusal(enum.Enum):
    """Why a chain re-run was not applied (nothing was changed)."""

    NOT_FOUND = "not found"
    IN_PROGRESS = "in progress"  # RECEIVED: the listener is still at it
    CHANGED = "changed"  # the order changed since the preview: look again
    DATABASE = "database"


@dataclass(frozen=True)
class ChainMessage:
    """One message of a re-run chain: which, and what re-applying it gives now."""

    key: int
    message_control_id: str
    message_type: str
    received_at: dt.datetime | None
    outcome_before: str
    outcome_after: str
    error_after: str = ""


@dataclass(frozen=True)
class FieldChange:
    """One stored field of a step, before and after the re-run (values as stored)."""

    field: str
    before: str
    after: str


@dataclass(frozen=True)
class StepDifference:
    """What the re-run does to one scheduled step of the order.

    ``label`` names the step (accession and SPS ID); ``created``/``removed`` say that
    the step exists only after/before; ``changes`` the fields that differ.
    """

    label: str
    sps_key: int | None
    created: bool = False
    removed: bool = False
    changes: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class ChainPlan:
    """A re-run of a message and every later message of the same order, in order.

    From a preview (rolled back) or an application (committed). ``fingerprint``
    identifies the order's state and the chain the preview saw; the application is
    refused (``ChainRefusal.CHANGED``) when it differs by then.
    """

    key: int
    messages: tuple[ChainMessage, ...] = ()
    differences: tuple[StepDifference, ...] = ()
    fingerprint: str = ""
    applied: bool = False
    refusal: ChainRefusal | None = None
    order_keys: tuple[str, ...] = ()
