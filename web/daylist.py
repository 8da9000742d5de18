"""What the day list does with what it shows: CSV export, print view, bulk changes.

Each takes the day list's own query string (:func:`web.worklist.parse_view`), so
an export or a printout holds exactly the rows, filters and order on screen.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections.abc import Sequence
from functools import partial

from flask import Blueprint, Response, abort, flash, redirect, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user
from sqlalchemy.orm import Session

from mwl.admin.users import Role
from mwl.audit import messages as audit_messages
from mwl.domain import SpsStatus, WorklistItem
from mwl.operations.audit import record_event
from mwl.orders.bulk import BULK_MAX, BulkResult, StepChange, apply_to_steps
from mwl.orders.edits import MANUAL_STATUSES, cancel_step, get_item
from mwl.orders.status import change_status
from mwl.worklist.daylist import count_steps, day_items
from web.auth import safe_next
from web.display import code_text, dicom_date, person_name
from web.params import key_of
from web.roles import role_required
from web.store import db_session, state, writer
from web.worklist import DayView, local_today, parse_view, priority_label, status_label

logger = logging.getLogger(__name__)

bp = Blueprint("daylist", __name__)

# Rows one export or printout holds at most; beyond, the file says it is cut short
# (a quarter of 20,000-step days is not a list anyone prints).
EXPORT_MAX = 5000
# A cell that a spreadsheet would read as a formula (OWASP "CSV injection"):
# prefixed with an apostrophe, so it shows as the text it is.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str) -> str:
    """``value`` as a CSV cell no spreadsheet runs: ``'`` before a formula's first sign."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _columns() -> list[str]:
    return [
        _("Start"),
        _("Priority"),
        _("Patient name"),
        _("Patient ID"),
        _("Issuer of patient ID"),
        _("Birth date"),
        _("Sex"),
        _("Procedure"),
        _("Accession number"),
        _("Modality"),
        _("Station AE title"),
        _("Station name"),
        _("Location (room)"),
        _("Status"),
    ]


def _row(item: WorklistItem) -> list[str]:
    return [
        item.start.strftime("%Y-%m-%d %H:%M"),
        priority_label(item.requested_procedure_priority) or item.requested_procedure_priority,
        person_name(item.patient_name),
        item.patient_id,
        item.issuer_of_patient_id,
        dicom_date(item.patient_birth_date),
        item.patient_sex,
        item.requested_procedure_description or code_text(item.requested_procedure_code),
        item.accession_number,
        item.modality,
        item.scheduled_station_ae_title,
        item.scheduled_station_name,
        item.scheduled_procedure_step_location,
        status_label(item.scheduled_procedure_step_status),
    ]


def export_text(items: Sequence[WorklistItem], total: int) -> str:
    """The CSV of ``items`` (a header, one row each), with a last line when cut short."""
    out = io.StringIO()
    # The BOM lets spreadsheets read UTF-8 (umlauts in names) without asking.
    out.write("\ufeff")
    sheet = csv.writer(out)
    sheet.writerow(_columns())
    for item in items:
        sheet.writerow([safe_cell(cell) for cell in _row(item)])
    if total > len(items):
        sheet.writerow(
            [_("Cut short: the first %(shown)s of %(num)s steps.", shown=len(items), num=total)]
        )
    return out.getvalue()


def _file_name(view: DayView) -> str:
    days = view.first.isoformat()
    if view.last:
        days += "_" + view.last.isoformat()
    return f"worklist-{days}.csv"


def _audit_export(view: DayView, items: Sequence[WorklistItem], name: str) -> None:
    """The export in the internal trail and, when ATNA audit is on, as 110106 Export."""
    what = request.full_path.rstrip("?")
    username = current_user.username
    with writer().begin() as session:
        record_event(
            session,
            username,
            "export",
            subject=what,
            changes={"exported_steps": (None, len(items))},
        )
        auditor = state().auditor
        if auditor is not None and auditor.enabled:
            patients = {item.patient_id: item for item in items}
            auditor.record(
                session,
                audit_messages.export(
                    auditor.source,
                    username,
                    request.remote_addr or "",
                    name,
                    [audit_messages.patient_object(pid) for pid in patients],
                    what,
                ),
            )


@bp.get("/worklist/export.csv")
@role_required(Role.VIEWER)
def export() -> ResponseReturnValue:
    """The list as shown (same filters and order, every page) as CSV; audited."""
    view = parse_view(request.args, local_today())
    session = db_session()
    query = view.query()
    items = day_items(session, query, limit=EXPORT_MAX)
    total = count_steps(session, query) if len(items) == EXPORT_MAX else len(items)
    name = _file_name(view)
    _audit_export(view, items, name)
    logger.info("worklist export of %d steps by %s", len(items), current_user.username)
    return Response(
        export_text(items, total),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/worklist/print")
@role_required(Role.VIEWER)
def print_view() -> ResponseReturnValue:
    """A modality's or room's list to print for downtime: every row, no navigation."""
    view = parse_view(request.args, local_today())
    session = db_session()
    query = view.query()
    items = day_items(session, query, limit=EXPORT_MAX)
    total = count_steps(session, query) if len(items) == EXPORT_MAX else len(items)
    return render_template(
        "worklist_print.html",
        view=view,
        items=items,
        total=total,
        printed_at=dt.datetime.now(),
        back=view.url(),
    )


def _bulk_change(action: str) -> tuple[StepChange, str]:
    """The core change behind a bulk action, and the action's name for people."""
    if action == "cancel":
        return cancel_step, _("Cancel")
    try:
        status = SpsStatus(action.upper())
    except ValueError:
        status = None
    if status is None or status not in MANUAL_STATUSES:
        abort(400, description=_("Unknown bulk action “%(value)s”.", value=action[:32]))

    return (
        partial(_set_status, status=status),
        _("Set status: %(status)s", status=status_label(status)),
    )


def _set_status(
    session: Session, key: int, username: str, reason: str, *, status: SpsStatus
) -> WorklistItem:
    # The item page's path: the one transition table, a reason, the RIS when reported.
    return change_status(session, key, status, username, reason, state().settings)[0]


def _selected_keys() -> list[int]:
    raw = request.form.getlist("step")
    if len(raw) > BULK_MAX:
        abort(400, description=_("Select at most %(max)s steps at once.", max=BULK_MAX))
    keys = [key_of(value) for value in raw]
    if any(key is None for key in keys):
        abort(400, description=_("The selection is not valid; select the steps again."))
    return list(dict.fromkeys(key for key in keys if key is not None))


@bp.post("/worklist/bulk")
@role_required(Role.EDITOR)
def bulk_confirm() -> ResponseReturnValue:
    """The confirmation step of a bulk action: what will change, a reason, confirm."""
    back = safe_next(request.form.get("next"))
    keys = _selected_keys()
    action = request.form.get("action", "")
    _change, label = _bulk_change(action)
    if not keys:
        flash(_("Select the steps to change first."), "error")
        return redirect(back)
    session = db_session()
    items = [item for item in (get_item(session, key) for key in keys) if item is not None]
    return render_template("worklist_bulk.html", items=items, action=action, label=label, back=back)


@bp.post("/worklist/bulk/apply")
@role_required(Role.EDITOR)
def bulk_apply() -> ResponseReturnValue:
    """Apply a confirmed bulk action to each selected step, each audited on its own."""
    back = safe_next(request.form.get("next"))
    keys = _selected_keys()
    change, label = _bulk_change(request.form.get("action", ""))
    reason = request.form.get("reason", "")
    with writer().begin() as session:
        result = apply_to_steps(session, keys, change, current_user.username, reason)
    logger.info(
        "bulk %s by %s: %d changed, %d refused",
        request.form.get("action", "")[:16],
        current_user.username,
        len(result.changed),
        len(result.refused),
    )
    _flash_result(result, label)
    return redirect(back)


def _flash_result(result: BulkResult, label: str) -> None:
    if result.changed:
        flash(
            ngettext(
                "%(action)s: %(num)s step changed.",
                "%(action)s: %(num)s steps changed.",
                len(result.changed),
                action=label,
            ),
            "info",
        )
    for key, error in result.refused.items():
        if error is None:
            flash(_("Step %(key)s: there is no such step.", key=key), "error")
            continue
        for problem in error.problems.values():
            text = _(problem.template, **problem.params)
            flash(_("Step %(key)s: %(text)s", key=key, text=text), "error")
