"""One worklist item: what the modality receives, its history, edits; new orders."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user

from mwl.admin.users import Role
from mwl.domain import HIDDEN_BY_DEFAULT, SpsStatus, WorklistItem
from mwl.orders.edits import (
    PERFORMED,
    EditError,
    StepChanges,
    UnknownStepError,
    cancel_step,
    edit_step,
    get_item,
    is_temporary_patient_id,
    restore_step,
)
from mwl.orders.entry import NewOrder, create_order, known_stations
from mwl.orders.history import audit_trail, messages_for_item, performed_steps_for_item
from mwl.orders.values import PRIORITIES, SEXES
from web import audit_events
from web.display import ITEM_SECTIONS
from web.roles import has_role, role_required
from web.store import db_session, state, writer

logger = logging.getLogger(__name__)

bp = Blueprint("items", __name__)

# Field names of the core (and of the audit trail) as people read them.
FIELD_LABELS: Mapping[str, Any] = {
    "patient_id": _l("Patient ID"),
    "issuer_of_patient_id": _l("Issuer of patient ID"),
    "patient_name": _l("Patient name"),
    "patient_birth_date": _l("Birth date"),
    "patient_sex": _l("Sex"),
    "start": _l("Scheduled start"),
    "modality": _l("Modality"),
    "scheduled_station_ae_title": _l("Station AE title"),
    "scheduled_station_name": _l("Station name"),
    "scheduled_procedure_step_location": _l("Location (room)"),
    "scheduled_procedure_step_description": _l("Step description"),
    "requested_procedure_description": _l("Procedure description"),
    "scheduled_performing_physician_name": _l("Performing physician"),
    "scheduled_procedure_step_status": _l("Status"),
    "accession_number": _l("Accession number"),
    "requested_procedure_priority": _l("Priority"),
    "priority": _l("Priority"),
    "referring_physician_name": _l("Referring physician"),
    "reason_for_the_requested_procedure": _l("Reason for the procedure"),
    "reason": _l("Reason for the change"),
}
ACTION_LABELS: Mapping[str, Any] = {
    "create": _l("Created"),
    "edit": _l("Edited"),
    "reschedule": _l("Rescheduled"),
    "cancel": _l("Canceled"),
    "restore": _l("Restored"),
}
NAME_PARTS = ("family", "given", "middle", "prefix", "suffix")
MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF", "OT")
# What a date input sends; anything else is passed on for the core to refuse.
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

FormValues = dict[str, str]
Errors = dict[str, str]


def _translated(error: EditError) -> Errors:
    return {name: _(p.template, **p.params) for name, p in error.problems.items()}


def _split_name(value: str) -> tuple[FormValues, str]:
    """The alphabetic group's components as form values, and the other groups kept."""
    alphabetic, _sep, others = value.partition("=")
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    return {f"name_{part}": text for part, text in zip(NAME_PARTS, parts, strict=True)}, others


def _joined_name(form: Mapping[str, str], others: str, errors: Errors) -> str:
    parts = [form.get(f"name_{part}", "").strip() for part in NAME_PARTS]
    if any("^" in p or "=" in p or "\\" in p for p in parts):
        errors["patient_name"] = _("The characters ^, = and \\ are not allowed in a name part.")
    alphabetic = "^".join(parts).rstrip("^")
    return f"{alphabetic}={others}" if others else alphabetic


def _dicom_date(value: str) -> str:
    """A date input's ``YYYY-MM-DD`` as DICOM ``YYYYMMDD``; anything else as sent."""
    value = value.strip()
    return value.replace("-", "") if _ISO_DATE.fullmatch(value) else value


def _start(value: str, errors: Errors) -> dt.datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        errors["start"] = _("Not a date and time (YYYY-MM-DD HH:MM).")
        return None


def _form_of(item: WorklistItem) -> FormValues:
    values, _others = _split_name(item.patient_name)
    birth = item.patient_birth_date
    values.update(
        patient_id=item.patient_id,
        issuer_of_patient_id=item.issuer_of_patient_id,
        patient_birth_date=(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}" if len(birth) == 8 else birth),
        patient_sex=item.patient_sex,
        start=item.start.strftime("%Y-%m-%dT%H:%M:%S"),
        modality=item.modality,
        scheduled_station_ae_title=item.scheduled_station_ae_title,
        scheduled_station_name=item.scheduled_station_name,
        scheduled_procedure_step_location=item.scheduled_procedure_step_location,
        scheduled_procedure_step_description=item.scheduled_procedure_step_description,
        requested_procedure_description=item.requested_procedure_description,
        scheduled_performing_physician_name=item.scheduled_performing_physician_name,
    )
    return values


def _item_or_404(key: int) -> WorklistItem:
    item = get_item(db_session(), key)
    if item is None:
        abort(404, description=_("There is no worklist item with this number."))
    return item


@bp.get("/items/<int:key>")
@role_required(Role.VIEWER)
def detail(key: int) -> str:
    """Everything about one item: stored values, the DICOM listing, messages, MPPS, trail."""
    item = _item_or_404(key)
    session = db_session()
    lister = state().item_lister
    status = item.scheduled_procedure_step_status
    audit_events.items_read(current_user.username, [item], f"item page {key}")
    return render_template(
        "item.html",
        item=item,
        sections=ITEM_SECTIONS,
        attributes=lister(item) if lister is not None else None,
        messages=messages_for_item(session, key),
        performed=performed_steps_for_item(session, key),
        trail=audit_trail(session, key),
        labels=FIELD_LABELS,
        actions=ACTION_LABELS,
        hidden=status in HIDDEN_BY_DEFAULT,
        can_edit=has_role(Role.EDITOR),
        can_cancel=status not in PERFORMED and status is not SpsStatus.CANCELED,
        can_restore=status is SpsStatus.CANCELED,
    )


@bp.route("/items/<int:key>/edit", methods=["GET", "POST"])
@role_required(Role.EDITOR)
def edit(key: int) -> ResponseReturnValue:
    """The edit form; on POST the changed values are checked and saved, or shown again."""
    item = _item_or_404(key)
    settings = state().settings
    temporary = is_temporary_patient_id(item.patient_id, settings)
    if request.method == "GET":
        return _edit_page(item, _form_of(item), {}, temporary)

    form = {name: value for name, value in request.form.items() if name != "csrf_token"}
    errors: Errors = {}
    _parts, other_groups = _split_name(item.patient_name)
    changes = StepChanges(
        patient_name=_joined_name(form, other_groups, errors),
        patient_birth_date=_dicom_date(form.get("patient_birth_date", "")),
        patient_sex=form.get("patient_sex", ""),
        start=_start(form.get("start", ""), errors),
        modality=form.get("modality", ""),
        scheduled_station_ae_title=form.get("scheduled_station_ae_title", ""),
        scheduled_station_name=form.get("scheduled_station_name", ""),
        scheduled_procedure_step_location=form.get("scheduled_procedure_step_location", ""),
        scheduled_procedure_step_description=form.get("scheduled_procedure_step_description", ""),
        requested_procedure_description=form.get("requested_procedure_description", ""),
        scheduled_performing_physician_name=form.get("scheduled_performing_physician_name", ""),
        patient_id=form.get("patient_id") if temporary else None,
        issuer_of_patient_id=form.get("issuer_of_patient_id") if temporary else None,
    )
    if "start" not in errors and changes.start is None:
        errors["start"] = _("This is required.")
    if not errors:
        try:
            with writer().begin() as session:
                saved = edit_step(
                    session,
                    key,
                    changes,
                    current_user.username,
                    form.get("reason", ""),
                    settings=settings,
                )
        except UnknownStepError:
            abort(404, description=_("There is no worklist item with this number."))
        except EditError as exc:
            errors = _translated(exc)
        else:
            logger.info("worklist item %d edited by %s", key, current_user.username)
            if saved == item:
                flash(_("Nothing was changed."), "info")
            else:
                flash(_("The changes are saved."), "info")
            return redirect(url_for("items.detail", key=key))
    # Field names only: the values are patient data.
    logger.info("edit of worklist item %d refused: %s", key, ", ".join(sorted(errors)))
    return _edit_page(item, form, errors, temporary), 422


def _edit_page(item: WorklistItem, form: FormValues, errors: Errors, temporary: bool) -> str:
    return render_template(
        "item_edit.html",
        item=item,
        form=form,
        errors=errors,
        labels=FIELD_LABELS,
        temporary=temporary,
        performed=item.scheduled_procedure_step_status in PERFORMED,
        sexes=SEXES,
        modalities=MODALITIES,
        stations=known_stations(db_session()),
    )


def _change_status(key: int, change: Any, done: str) -> ResponseReturnValue:
    reason = request.form.get("reason", "")
    try:
        with writer().begin() as session:
            change(session, key, current_user.username, reason)
    except UnknownStepError:
        abort(404, description=_("There is no worklist item with this number."))
    except EditError as exc:
        logger.info("%s of worklist item %d refused", change.__name__, key)
        for message in _translated(exc).values():
            flash(message, "error")
    else:
        logger.info("worklist item %d: %s by %s", key, change.__name__, current_user.username)
        flash(done, "info")
    return redirect(url_for("items.detail", key=key))


@bp.post("/items/<int:key>/cancel")
@role_required(Role.EDITOR)
def cancel(key: int) -> ResponseReturnValue:
    """Cancel the step: modalities no longer see it."""
    return _change_status(key, cancel_step, _("The step is canceled; modalities no longer see it."))


@bp.post("/items/<int:key>/restore")
@role_required(Role.EDITOR)
def restore(key: int) -> ResponseReturnValue:
    """Undo a cancel: the step gets back the status it had."""
    return _change_status(key, restore_step, _("The step is restored."))


@bp.route("/orders/new", methods=["GET", "POST"])
@role_required(Role.EDITOR)
def new_order() -> ResponseReturnValue:
    """The new order form (emergency, walk-in); on POST the order goes on the worklist."""
    if request.method == "GET":
        return _new_order_page({"priority": "STAT"}, {})
    form = {name: value for name, value in request.form.items() if name != "csrf_token"}
    errors: Errors = {}
    new = NewOrder(
        modality=form.get("modality", ""),
        scheduled_station_ae_title=form.get("scheduled_station_ae_title", ""),
        start=_start(form.get("start", ""), errors),
        requested_procedure_description=form.get("requested_procedure_description", ""),
        patient_id=form.get("patient_id", ""),
        patient_name=_joined_name(form, "", errors),
        patient_birth_date=_dicom_date(form.get("patient_birth_date", "")),
        patient_sex=form.get("patient_sex", ""),
        unidentified=form.get("unidentified") == "yes",
        priority=form.get("priority", "STAT"),
        referring_physician_name=form.get("referring_physician_name", ""),
        reason_for_the_requested_procedure=form.get("reason_for_the_requested_procedure", ""),
        scheduled_station_name=form.get("scheduled_station_name", ""),
        scheduled_procedure_step_location=form.get("scheduled_procedure_step_location", ""),
        issuer_of_patient_id=form.get("issuer_of_patient_id", ""),
    )
    if not errors:
        try:
            with writer().begin() as session:
                item = create_order(session, new, state().settings, current_user.username)
        except EditError as exc:
            errors = _translated(exc)
        else:
            logger.info("new order %s entered by %s", item.accession_number, current_user.username)
            flash(
                _("Order %(accession)s is on the worklist.", accession=item.accession_number),
                "info",
            )
            return redirect(url_for("items.detail", key=item.step_key))
    logger.info("new order refused: %s", ", ".join(sorted(errors)))
    return _new_order_page(form, errors), 422


def _new_order_page(form: FormValues, errors: Errors) -> str:
    settings = state().settings
    return render_template(
        "order_new.html",
        form=form,
        errors=errors,
        labels=FIELD_LABELS,
        sexes=SEXES,
        priorities=PRIORITIES,
        modalities=MODALITIES,
        stations=known_stations(db_session()),
        temporary_prefix=settings.order_unidentified_id_prefix,
        accession_prefix=settings.order_accession_prefix,
    )
