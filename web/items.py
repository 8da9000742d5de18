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
from sqlalchemy import select

from mwl.admin.overrides import apply_overrides, load_overrides, set_overrides
from mwl.admin.users import Role
from mwl.domain import HIDDEN_BY_DEFAULT, SpsStatus, WorklistItem
from mwl.errors import SettingsError
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
from mwl.orders.status import STATUS_ACTION, allowed_statuses, change_status
from mwl.orders.values import PRIORITIES, SEXES
from mwl.store.models import ScheduledProcedureStep
from web import audit_events
from web.confirm import confirmation_page, confirmed
from web.display import ITEM_SECTIONS, person_name, step_status_text
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
    STATUS_ACTION: _l("Status changed"),
}
NAME_PARTS = ("family", "given", "middle", "prefix", "suffix")
MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF", "OT")
# Dates as people type them: ISO (what a date input sends), German/Swiss, DICOM.
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_DOTTED_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})")

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
    """A typed date (``YYYY-MM-DD``, ``DD.MM.YYYY``) as DICOM ``YYYYMMDD``; else as typed.

    What does not read as a date goes to the core as it is, which refuses it with
    its message; the form then shows it again as typed.
    """
    value = value.strip()
    if match := _ISO_DATE.fullmatch(value):
        year, month, day = match.groups()
    elif match := _DOTTED_DATE.fullmatch(value):
        day, month, year = match.groups()
    else:
        return value
    return f"{year}{int(month):02d}{int(day):02d}"


class _FormRefused(Exception):
    """The page found a problem of its own: roll back what the core accepted."""


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
    return _detail_page(key)


def _detail_page(
    key: int, status_form: FormValues | None = None, errors: Errors | None = None
) -> str:
    """The item page; with the status form as sent and its errors when a change was refused."""
    item = _item_or_404(key)
    session = db_session()
    lister = state().item_lister
    status = item.scheduled_procedure_step_status
    audit_events.items_read(current_user.username, [item], f"item page {key}")
    trail = audit_trail(session, key)
    return render_template(
        "item.html",
        item=item,
        sections=ITEM_SECTIONS,
        attributes=lister(item) if lister is not None else None,
        messages=messages_for_item(session, key),
        performed=performed_steps_for_item(session, key),
        trail=trail,
        labels=FIELD_LABELS,
        actions=ACTION_LABELS,
        hidden=status in HIDDEN_BY_DEFAULT,
        can_edit=has_role(Role.EDITOR),
        can_rules=has_role(Role.ADMIN),
        can_cancel=SpsStatus.CANCELED in allowed_statuses(status),
        can_restore=status is SpsStatus.CANCELED,
        next_statuses=[s for s in allowed_statuses(status) if s is not SpsStatus.CANCELED],
        undo_key=_undo_key(trail, key, status),
        status_form=status_form or {},
        errors=errors or {},
    )


def _undo_key(trail: list[Any], key: int, status: SpsStatus) -> int | None:
    """The audit event of the cancel that "restore" undoes, while the step is canceled."""
    if status is not SpsStatus.CANCELED:
        return None
    own = [event for event in trail if event.sps_key == key]
    last = own[-1] if own else None
    return last.key if last is not None and last.action == "cancel" else None


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
    # The core checks every value even when the page found a problem already, so the
    # form shows all problems at once; the page's own problems then roll back.
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
            if errors:
                raise _FormRefused
    except UnknownStepError:
        abort(404, description=_("There is no worklist item with this number."))
    except EditError as exc:
        errors = {**_translated(exc), **errors}
    except _FormRefused:
        pass
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
    """Cancel the step (modalities no longer see it), after a confirmation page."""
    item = _item_or_404(key)
    cancelable = SpsStatus.CANCELED in allowed_statuses(item.scheduled_procedure_step_status)
    # What cannot be canceled is refused at once (with the reason), without asking.
    if cancelable and not confirmed():
        return confirmation_page(
            title=_("Cancel this step?"),
            question=_(
                "Modalities will no longer see this step on their worklist; the RIS is not told."
            ),
            button=_("Cancel the step"),
            back_url=url_for("items.detail", key=key),
            details=_step_lines(item),
            undo=_(
                "You can undo this afterwards: the item page offers to restore the step"
                " (until a modality reports performing it)."
            ),
            reason_label=_("Reason (optional)"),
        )
    return _change_status(key, cancel_step, _("The step is canceled; modalities no longer see it."))


def _step_lines(item: WorklistItem) -> list[str]:
    return [
        _("Patient: %(name)s (%(id)s)", name=person_name(item.patient_name), id=item.patient_id),
        _(
            "Accession %(accession)s, %(modality)s, %(start)s",
            accession=item.accession_number or "—",
            modality=item.modality,
            start=item.start.strftime("%Y-%m-%d %H:%M"),
        ),
        _("Status now: %(status)s", status=step_status_text(item.scheduled_procedure_step_status)),
    ]


@bp.post("/items/<int:key>/status")
@role_required(Role.EDITOR)
def status(key: int) -> ResponseReturnValue:
    """Change the step status by hand, along the table of allowed transitions."""
    try:
        target = SpsStatus(request.form.get("status", ""))
    except ValueError:
        abort(400, description=_("Choose one of the statuses in the list."))
    try:
        with writer().begin() as session:
            _item, queued = change_status(
                session,
                key,
                target,
                current_user.username,
                request.form.get("reason", ""),
                state().settings,
            )
    except UnknownStepError:
        abort(404, description=_("There is no worklist item with this number."))
    except EditError as exc:
        logger.info("status change of worklist item %d refused", key)
        errors = _translated(exc)
        if "scheduled_procedure_step_status" in errors:
            errors["status"] = errors.pop("scheduled_procedure_step_status")
        form = {"status": target.value, "reason": request.form.get("reason", "")}
        # Shown again next to the form's fields, with what was chosen and typed.
        db_session().rollback()
        return _detail_page(key, form, errors), 422
    logger.info("worklist item %d: status %s by %s", key, target.value, current_user.username)
    done = _("The status is now %(status)s.", status=step_status_text(target))
    if queued:
        done += " " + _("The RIS is told, as a modality's report would tell it.")
    flash(done, "info")
    return redirect(url_for("items.detail", key=key), 303)


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
    # As in the edit form: the core's problems and the page's are shown together.
    try:
        with writer().begin() as session:
            item = create_order(session, new, state().settings, current_user.username)
            if errors:
                raise _FormRefused
    except EditError as exc:
        errors = {**_translated(exc), **errors}
    except _FormRefused:
        pass
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


# --------------------------------------------------------------------------- station rules


def _station_rules() -> tuple[Any, ...]:
    """The station rules in force (file, environment and page values)."""
    try:
        effective = apply_overrides(state().settings, load_overrides(db_session()))
    except SettingsError:
        effective = state().settings
    return effective.hl7_station_rules


@bp.app_template_global()
def station_rules_offer() -> bool:
    """Whether to offer the station rules form: an admin looks, and no station rule exists.

    For the banner of the day list and the settings pages
    (``items_macros.html``, ``station_rules_banner``).
    """
    return has_role(Role.ADMIN) and not _station_rules()


def _used_modalities() -> list[str]:
    column = ScheduledProcedureStep.modality
    used = db_session().scalars(select(column).where(column != "").distinct().order_by(column))
    return list(dict.fromkeys([*used, *MODALITIES]))


@bp.route("/settings/station-rules", methods=["GET", "POST"])
@role_required(Role.ADMIN)
def station_rules() -> ResponseReturnValue:
    """First-start form: one station AE title per modality, stored as station rules.

    HL7 orders that name no station (no IPC-9) then get the modality's station; the
    rules can be refined later on the HL7 settings page.
    """
    modalities = _used_modalities()
    existing = _station_rules()
    if request.method == "GET":
        form = {
            f"ae_{rule.modality.upper()}": rule.station_ae_title
            for rule in existing
            if rule.modality and not rule.procedure_code and not rule.location
        }
        return _rules_page(modalities, form, {}, bool(existing))
    form = {name: value.strip() for name, value in request.form.items() if name != "csrf_token"}
    errors: Errors = {}
    rules = []
    for modality in modalities:
        title = form.get(f"ae_{modality}", "")
        if not title:
            continue
        if len(title) > 16 or "\\" in title or not title.isprintable():
            errors[f"ae_{modality}"] = _(
                "An AE title is at most 16 characters, without backslash or control characters."
            )
        rules.append({"station_ae_title": title, "modality": modality})
    if not rules and not errors:
        errors[f"ae_{modalities[0]}"] = _("Enter the station AE title of at least one modality.")
    if errors:
        return _rules_page(modalities, form, errors, bool(existing)), 422
    # Rules with further conditions (procedure code, location) stay first: they are
    # more specific, and the first matching rule wins.
    kept = [to_plain_rule(r) for r in existing if r.procedure_code or r.location]
    try:
        with writer().begin() as session:
            set_overrides(
                session,
                state().settings,
                {"hl7_station_rules": kept + rules},
                current_user.username,
            )
    except SettingsError as exc:
        errors[f"ae_{modalities[0]}"] = exc.reason
        return _rules_page(modalities, form, errors, bool(existing)), 422
    flash(
        _(
            "%(count)s station rule(s) saved. New HL7 orders without a station get one;"
            " re-process earlier orders from the HL7 log to give them one too.",
            count=len(rules),
        ),
        "info",
    )
    return redirect(url_for("items.station_rules"), 303)


def to_plain_rule(rule: Any) -> dict[str, str]:
    """A station rule as the settings store it (only the conditions it has)."""
    values = {
        "station_ae_title": rule.station_ae_title,
        "station_name": rule.station_name,
        "modality": rule.modality,
        "procedure_code": rule.procedure_code,
        "location": rule.location,
    }
    return {name: value for name, value in values.items() if value}


def _rules_page(modalities: list[str], form: FormValues, errors: Errors, existing: bool) -> str:
    return render_template(
        "station_rules.html",
        modalities=modalities,
        form=form,
        errors=errors,
        existing=existing,
        stations=known_stations(db_session()),
        labels={f"ae_{m}": m for m in modalities},
    )
