"""The HL7 message log: filtered list, one message with named fields and its ACK, re-processing."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user
from werkzeug.routing import BuildError

from mwl.admin.users import Role
from mwl.operations.activity import (
    MessageFilter,
    message_changes,
    message_detail,
    recent_messages,
)
from mwl.operations.audit import events_for_subject
from mwl.operations.message_view import (
    REPROCESSABLE_OUTCOMES,
    ChainPlan,
    ChainRefusal,
    MessageView,
    ReprocessOutcome,
    ReprocessRefusal,
    reprocess_subject,
)
from mwl.worklist.fields import FIELDS
from web import audit_events
from web.params import key_of
from web.roles import has_role, role_required
from web.store import ChainReprocessor, db_session, state

bp = Blueprint("messages", __name__)

PAGE_SIZE = 100
OUTCOMES = ("AA", "AE", "AR", "RECEIVED")
# MSH-9 as the log stores it (mwl.store.models.Hl7Message.message_type: 32 characters).
TYPE_LENGTH = 32
_TYPE = re.compile(r"[A-Z0-9_^]*")
# Endpoint of one worklist item's page (web/items.py), linked when it exists.
ITEM_ENDPOINT = "items.detail"


@dataclass
class LogFilter:
    """The filter form as typed (``values``), what it means (``query``) and its errors."""

    values: dict[str, str]
    query: MessageFilter = field(default_factory=MessageFilter)
    before: int | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether any condition is set (the page then says so)."""
        return self.query != MessageFilter()

    def args(self) -> dict[str, str]:
        """The filter as query arguments, for the paging links."""
        return {name: value for name, value in self.values.items() if value}


def read_filter(args: Mapping[str, str]) -> LogFilter:
    """Validate the filter form's query arguments; bad values end up in ``errors``."""
    values = {name: args.get(name, "").strip() for name in ("type", "outcome", "from", "until")}
    form = LogFilter(values)
    message_type = values["type"].upper()
    if len(message_type) > TYPE_LENGTH or not _TYPE.fullmatch(message_type):
        form.errors["type"] = _(
            "A message type is letters and digits like ORM^O01 or ADT (at most %(n)s characters).",
            n=TYPE_LENGTH,
        )
    outcome = values["outcome"].upper()
    if outcome and outcome not in OUTCOMES:
        form.errors["outcome"] = _("Choose one of the outcomes in the list.")
    received_from = received_before = None
    if values["from"]:
        try:
            received_from = _utc(_local_datetime(values["from"])[0])
        except (ValueError, OverflowError, OSError):
            form.errors["from"] = _date_error()
    if values["until"]:
        try:
            until, step = _local_datetime(values["until"])
            # "Until 10:30" includes the whole minute 10:30 (a date: the whole day).
            received_before = _utc(until + step)
        except (ValueError, OverflowError, OSError):
            form.errors["until"] = _date_error()
    if received_from and received_before and received_from >= received_before:
        form.errors["until"] = _("The end of the period must be after its start.")
    before = args.get("before", "")
    if before:
        key = key_of(before)
        if key is not None:
            form.before = key
        else:
            form.errors["before"] = _("The page link is not valid; start again from the newest.")
    if not form.errors:
        form.query = MessageFilter(
            message_type=message_type or None,
            outcome=outcome or None,
            received_from=received_from,
            received_before=received_before,
        )
    return form


def _date_error() -> str:
    return _("Enter a date and time like 2026-11-21 09:30 (local time).")


def _local_datetime(text: str) -> tuple[dt.datetime, dt.timedelta]:
    """A date-time typed on the page and the precision it was typed with.

    ``2026-11-21T09:30`` (what ``<input type=datetime-local>`` sends), a space for
    the T, seconds, or a date alone. Without an offset it is the server's local time.

    Raises
    ------
    ValueError
        For anything else.
    """
    value = dt.datetime.fromisoformat(text)
    time_part = re.split(r"[T ]", text, maxsplit=1)[1:]
    digits = len(re.sub(r"[^0-9]", "", re.split(r"[+\-Z.]", time_part[0])[0])) if time_part else 0
    step = {0: dt.timedelta(days=1), 2: dt.timedelta(hours=1), 4: dt.timedelta(minutes=1)}
    return value, step.get(digits, dt.timedelta(seconds=1))


def _utc(value: dt.datetime) -> dt.datetime:
    """Local (or offset-aware) time as the naive UTC the log stores."""
    return value.astimezone(dt.UTC).replace(tzinfo=None)


@bp.get("/messages")
@role_required(Role.VIEWER)
def index() -> ResponseReturnValue:
    """The newest messages matching the filter; ``?before=KEY`` shows older ones."""
    form = read_filter(request.args)
    if form.errors:
        return render_template("messages.html", form=form, messages=None, older=None), 400
    # One more than a page tells whether an "older" link is needed.
    found = recent_messages(
        db_session(), limit=PAGE_SIZE + 1, before_key=form.before, filters=form.query
    )
    page = found[:PAGE_SIZE]
    older = page[-1].key if len(found) > PAGE_SIZE else None
    return render_template("messages.html", form=form, messages=page, older=older)


@bp.get("/messages/<int:key>")
@role_required(Role.VIEWER)
def detail(key: int) -> str:
    """One message: header facts, segments with field names, the ACK sent, its re-runs."""
    session = db_session()
    message = message_detail(session, key)
    if message is None:
        abort(404, description=_("There is no message with this number."))
    services = state()
    describe = services.hl7_describer
    message_view: MessageView | None = describe(message.raw) if describe else None
    ack_view: MessageView | None = describe(message.ack) if describe and message.ack else None
    reprocessable = message.summary.outcome in REPROCESSABLE_OUTCOMES
    changes = message_changes(session, key)
    audit_events.message_read(current_user.username, changes, f"message page {key}")
    return render_template(
        "message.html",
        message=message,
        message_view=message_view,
        ack_view=ack_view,
        changes=changes,
        trail=events_for_subject(session, reprocess_subject(key)),
        reprocessable=reprocessable,
        may_reprocess=has_role(Role.EDITOR),
        can_reprocess=services.hl7_reprocessor is not None,
        can_rerun=services.chain_reprocessor is not None,
        describer=describe is not None,
        item_url=_item_url,
    )


@bp.post("/messages/<int:key>/reprocess")
@role_required(Role.EDITOR)
def reprocess(key: int) -> ResponseReturnValue:
    """Run a rejected message through the mapping again with the current settings."""
    message = message_detail(db_session(), key)
    if message is None:
        abort(404, description=_("There is no message with this number."))
    reprocessor = state().hl7_reprocessor
    if reprocessor is None:
        abort(
            503,
            description=_(
                "Re-processing is not available: this web server runs without the HL7 service."
            ),
        )
    target = url_for("messages.detail", key=key)
    if message.summary.outcome not in REPROCESSABLE_OUTCOMES:
        flash(_refusal_text(_refusal_for(message.summary.outcome)), "error")
        return redirect(target, 303)
    # The read session is done; the re-run is its own writer unit of work.
    db_session().rollback()
    outcome = reprocessor(key, current_user.username)
    category, text = _outcome_message(outcome)
    flash(text, category)
    return redirect(target, 303)


def _refusal_for(outcome: str) -> ReprocessRefusal:
    return ReprocessRefusal.IN_PROGRESS if outcome == "RECEIVED" else ReprocessRefusal.NOT_REJECTED


def _refusal_text(refusal: ReprocessRefusal) -> str:
    texts = {
        ReprocessRefusal.NOT_FOUND: _("There is no message with this number."),
        ReprocessRefusal.NOT_REJECTED: _(
            "Not re-processed: the message was accepted (AA); it is on the worklist already."
        ),
        ReprocessRefusal.IN_PROGRESS: _(
            "Not re-processed: the message is still being processed (RECEIVED)."
        ),
        ReprocessRefusal.RESEND_ACCEPTED: _(
            "Not re-processed: the sender resent this message and the resent copy was"
            " accepted; applying this one again could undo later changes."
        ),
        ReprocessRefusal.DATABASE: _(
            "Not re-processed: the database did not answer. Nothing was changed; try again."
        ),
    }
    return texts[refusal]


def _outcome_message(outcome: ReprocessOutcome) -> tuple[str, str]:
    if outcome.refusal is not None:
        return "error", _refusal_text(outcome.refusal)
    if outcome.accepted:
        return "info", _(
            "Message re-processed and accepted (%(before)s → AA). The sender was not told.",
            before=outcome.outcome_before,
        )
    return "error", _(
        "Message re-processed, still not accepted (%(outcome)s): %(error)s",
        outcome=outcome.outcome_after,
        error=outcome.error_after,
    )


def _item_url(sps_key: int) -> str | None:
    """The worklist item page of a step, or None while the page does not exist."""
    try:
        return url_for(ITEM_ENDPOINT, key=sps_key)
    except BuildError:
        return None


# --------------------------------------------------------------------------- chains


def _chain_runner(key: int) -> ChainReprocessor:
    if message_detail(db_session(), key) is None:
        abort(404, description=_("There is no message with this number."))
    runner = state().chain_reprocessor
    if runner is None:
        abort(
            503,
            description=_(
                "Re-processing is not available: this web server runs without the HL7 service."
            ),
        )
    return runner


@bp.get("/messages/<int:key>/rerun")
@role_required(Role.EDITOR)
def reprocess_preview(key: int) -> ResponseReturnValue:
    """What re-running this message and the later ones of its order would change."""
    runner = _chain_runner(key)
    db_session().rollback()
    plan = runner.preview(key)
    if plan.refusal is ChainRefusal.NOT_FOUND:
        abort(404, description=_("There is no message with this number."))
    return _chain_page(plan, applied=False)


@bp.post("/messages/<int:key>/rerun")
@role_required(Role.EDITOR)
def reprocess_apply(key: int) -> ResponseReturnValue:
    """Re-run the chain the preview showed, unless the order changed since."""
    runner = _chain_runner(key)
    db_session().rollback()
    plan = runner.apply(key, current_user.username, request.form.get("fingerprint", ""))
    if plan.refusal is ChainRefusal.NOT_FOUND:
        abort(404, description=_("There is no message with this number."))
    if plan.refusal is ChainRefusal.CHANGED:
        flash(
            _(
                "Not re-processed: the order changed since the preview (a new message or an"
                " edit). Here is the difference as it is now."
            ),
            "error",
        )
        return _chain_page(runner.preview(key), applied=False), 409
    if plan.refusal is not None:
        flash(_chain_refusal_text(plan.refusal), "error")
        return redirect(url_for("messages.detail", key=key), 303)
    flash(
        ngettext(
            "%(num)d message re-processed; the order's steps are as shown.",
            "%(num)d messages re-processed in their order; the order's steps are as shown.",
            len(plan.messages),
        ),
        "info",
    )
    return _chain_page(plan, applied=True)


def _chain_refusal_text(refusal: ChainRefusal) -> str:
    texts = {
        ChainRefusal.NOT_FOUND: _("There is no message with this number."),
        ChainRefusal.IN_PROGRESS: _(
            "Not re-processed: the message is still being processed (RECEIVED)."
        ),
        ChainRefusal.CHANGED: _("Not re-processed: the order changed since the preview."),
        ChainRefusal.DATABASE: _(
            "Not re-processed: the database did not answer. Nothing was changed; try again."
        ),
    }
    return texts[refusal]


def _chain_page(plan: ChainPlan, *, applied: bool) -> str:
    return render_template(
        "reprocess.html",
        plan=plan,
        applied=applied,
        refusal_text=_chain_refusal_text(plan.refusal) if plan.refusal else "",
        labels=FIELD_NAMES,
        item_url=_item_url,
    )


# The stored fields of a step as the item page names them (web/items.py FIELD_LABELS
# for the editable ones; the field declaration's label for the rest).
FIELD_NAMES: Mapping[str, Any] = {f.name: _l(f.label) for f in FIELDS}
