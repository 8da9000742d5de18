"""Admin pages: trusted AEs and per-AE profiles, HL7 mapping rules, effective settings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    FieldList,
    Form,
    FormField,
    HiddenField,
    IntegerField,
    RadioField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import Length, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from mwl.admin.overrides import (
    EDITABLE,
    RESPONSE_CHARSETS,
    apply_overrides,
    clear_override,
    describe_settings,
    load_overrides,
    plain_value,
    set_overrides,
    stored_overrides,
)
from mwl.admin.users import Role
from mwl.config import Settings
from mwl.domain import SpsStatus
from mwl.errors import SettingsError
from mwl.orders.apply import DEFAULT_STATUS_TABLE
from web import audit_events
from web.confirm import confirmation_page, confirmed
from web.display import STATUS_LABELS
from web.roles import role_required
from web.store import db_session, state, writer

bp = Blueprint("admin", __name__, url_prefix="/admin")

#: The settings of each page, in the order the page shows them.
AE_SETTINGS = (
    "dicom_ae_profiles",
    "dicom_restrict_calling_ae",
    "dicom_max_matches",
    "dicom_response_charset",
)
# The watchdog's thresholds, changed on their own page (web.alerts).
WATCHDOG_SETTINGS = tuple(name for name in EDITABLE if name.startswith("watchdog_"))
HL7_SETTINGS = (
    "hl7_modality_map",
    "hl7_station_rules",
    "hl7_order_status",
    "hl7_accepted_senders",
    "hl7_protocol_code_component",
    "hl7_missing_start",
    "hl7_station_from_orc18",
)
# A page value that needs more rows than this is a file's job.
MAX_ROWS = 200
# The select value for "no step status: such messages are rejected" (the TOML form is "").
REJECT = "-"


# --------------------------------------------------------------------------- forms


class MultiCheckboxField(SelectMultipleField):
    """A set of checkboxes, one per choice (the template lays them out)."""

    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


def _charset_choices(default_label: Any) -> list[SelectChoice]:
    return [SelectChoice("", default_label)] + [
        SelectChoice(term, f"{term} – {name}") for term, name in RESPONSE_CHARSETS.items()
    ]


def _statuses() -> list[SelectChoice]:
    # The defined term is what the settings file holds; the label says it in words.
    return [
        SelectChoice(s.value, _l("%(label)s (%(term)s)", label=STATUS_LABELS[s], term=s.value))
        for s in SpsStatus
    ]


class ProfileRow(Form):
    """One calling AE's worklist profile (a ``[[dicom.ae_profiles]]`` table)."""

    ae_title = StringField(_l("Calling AE title"), validators=[Optional(), Length(max=16)])
    host = StringField(_l("Only from IP address"), validators=[Optional(), Length(max=45)])
    response_charset = SelectField(
        _l("Response character set"), choices=_charset_choices(_l("Broker-wide setting"))
    )
    calling_ae_as_station = BooleanField(_l("Show only its own station's steps"))
    date_window_days = IntegerField(
        _l("Date window (days)"), validators=[Optional(), NumberRange(min=0, max=366)]
    )
    visible_statuses = MultiCheckboxField(_l("Statuses shown"), choices=_statuses())
    max_matches = IntegerField(_l("Max. matches"), validators=[Optional(), NumberRange(min=0)])
    remove = BooleanField(_l("Remove this profile"))


class AesForm(FlaskForm):
    """Trusted AEs: the profiles, the restriction switch and the broker-wide defaults."""

    restrict = BooleanField(_l("Only AEs with a profile may connect"))
    max_matches = IntegerField(
        _l("Max. matches per query (0: no limit)"), validators=[NumberRange(min=0)]
    )
    response_charset = SelectField(
        _l("Response character set"), choices=_charset_choices(_l("(choose)"))
    )
    profiles = FieldList(FormField(ProfileRow), max_entries=MAX_ROWS)
    version = HiddenField()


class ModalityRow(Form):
    """One entry of the modality map."""

    sent = StringField(_l("Value sent"), validators=[Optional(), Length(max=64)])
    modality = StringField(_l("DICOM modality"), validators=[Optional(), Length(max=16)])
    remove = BooleanField(_l("Remove"))


class StationRuleRow(Form):
    """One routing rule: conditions and the station it picks."""

    station_ae_title = StringField(_l("Station AE title"), validators=[Optional(), Length(max=16)])
    station_name = StringField(_l("Station name"), validators=[Optional(), Length(max=16)])
    modality = StringField(_l("If modality is"), validators=[Optional(), Length(max=16)])
    procedure_code = StringField(
        _l("If procedure code is"), validators=[Optional(), Length(max=64)]
    )
    location = StringField(_l("If location is"), validators=[Optional(), Length(max=64)])
    remove = BooleanField(_l("Remove"))


class OrderStatusRow(Form):
    """One ORC-1/ORC-5 pair and the step status it gives."""

    order_control = StringField(_l("Order control (ORC-1)"), validators=[Optional(), Length(max=2)])
    order_status = StringField(_l("Order status (ORC-5)"), validators=[Optional(), Length(max=2)])
    status = SelectField(
        _l("Step status"),
        choices=[
            SelectChoice("", _l("(choose)")),
            SelectChoice(REJECT, _l("none: reject the message")),
        ]
        + _statuses(),
    )
    remove = BooleanField(_l("Remove"))


class Hl7Form(FlaskForm):
    """The HL7 mapping and routing rules."""

    modality_map = FieldList(FormField(ModalityRow), max_entries=MAX_ROWS)
    station_rules = FieldList(FormField(StationRuleRow), max_entries=MAX_ROWS)
    order_status = FieldList(FormField(OrderStatusRow), max_entries=MAX_ROWS)
    accepted_senders = TextAreaField(
        _l("Accepted senders (one APPLICATION|FACILITY pattern per line)"),
        validators=[Length(max=4000)],
    )
    protocol_code_component = RadioField(
        _l("Scheduled protocol code from"),
        choices=[
            SelectChoice("4", _l("OBR-4.4 to 4.6 (alternate identifier)")),
            SelectChoice("1", _l("OBR-4.1 to 4.3 (identifier)")),
        ],
    )
    missing_start = RadioField(
        _l("New step without a start time"),
        choices=[
            SelectChoice("now", _l("Schedule it now")),
            SelectChoice("reject", _l("Reject the message (AE)")),
        ],
    )
    station_from_orc18 = BooleanField(_l("Take the station AE title from ORC-18"))
    version = HiddenField()


# --------------------------------------------------------------------------- helpers


def _effective() -> tuple[Settings, str]:
    """The settings in force (file/environment plus page values) and any problem with them."""
    base = state().settings
    try:
        return apply_overrides(base, load_overrides(db_session())), ""
    except SettingsError as exc:
        # The services keep their last good settings; the page says why.
        return base, str(exc)


def _version(settings: Settings, names: Sequence[str]) -> str:
    """A fingerprint of the page's values, to notice a change by someone else meanwhile."""
    text = json.dumps([plain_value(settings, n) for n in names], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _stored_names() -> set[str]:
    return set(stored_overrides(db_session()))


def _int(value: int | None) -> int:
    return int(value or 0)


def _save(values: dict[str, Any]) -> tuple[list[str], str]:
    """Store the page's values; the names changed, or the reason nothing was stored."""
    try:
        with writer().begin() as session:
            changed = set_overrides(session, state().settings, values, current_user.username)
            audit_events.settings_changed(session, current_user.username, changed)
    except SettingsError as exc:
        return [], _("%(setting)s: %(reason)s", setting=exc.setting, reason=exc.reason)
    return changed, ""


def _saved_message(changed: list[str]) -> None:
    if changed:
        flash(
            _(
                "Saved: %(names)s. Services use the change within a few seconds.",
                names=", ".join(changed),
            ),
            "info",
        )
    else:
        flash(_("Nothing changed."), "info")


def _conflict() -> str:
    return _(
        "Someone changed these settings while you were editing; nothing was saved."
        " The current values are shown: make your change again."
    )


# --------------------------------------------------------------------------- overview


@bp.get("")
@role_required(Role.ADMIN)
def index() -> str:
    """Every setting in force, where it comes from, and who changed it on the page."""
    effective, problem = _effective()
    stored = stored_overrides(db_session()) if not problem else {}
    rows = describe_settings(state().settings, effective, stored)
    pages = {name: "admin.aes" for name in AE_SETTINGS}
    pages.update({name: "admin.hl7" for name in HL7_SETTINGS})
    pages.update({name: "alerts.settings" for name in WATCHDOG_SETTINGS})
    return render_template(
        "admin_index.html",
        editable=[r for r in rows if r.editable],
        fixed=[r for r in rows if not r.editable],
        pages=pages,
        problem=problem,
        shown=_shown,
    )


def _shown(value: Any) -> str:
    """A value as the configuration file's JSON form, compact."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------- AEs


def _aes_form(settings: Settings) -> AesForm:
    profiles = plain_value(settings, "dicom_ae_profiles") + [{}]
    return AesForm(
        formdata=None,
        data={
            "restrict": settings.dicom_restrict_calling_ae,
            "max_matches": settings.dicom_max_matches,
            "response_charset": settings.dicom_response_charset,
            "profiles": profiles,
            "version": _version(settings, AE_SETTINGS),
        },
    )


def _render_aes(form: AesForm, error: str = "", status: int = 200) -> ResponseReturnValue:
    return (
        render_template("admin_aes.html", form=form, error=error, overridden=_stored_names()),
        status,
    )


@bp.route("/aes", methods=["GET", "POST"])
@role_required(Role.ADMIN)
def aes() -> ResponseReturnValue:
    """Trusted AEs and per-AE profiles; on POST store what changed."""
    effective, problem = _effective()
    form = AesForm()
    if not form.is_submitted():
        return _render_aes(_aes_form(effective), problem)
    # The fields' checks and the rows' checks both run, so every problem shows at once.
    valid = form.validate()
    profiles = _profile_values(form, plain_value(effective, "dicom_ae_profiles"))
    if not valid or profiles is None:
        return _render_aes(form, _("Some values are not valid; see the marked fields."), 400)
    if form.version.data != _version(effective, AE_SETTINGS):
        return _render_aes(_aes_form(effective), _conflict(), 409)
    removed = [
        _("Profile of %(ae)s", ae=entry.form.ae_title.data or "—")
        for entry in form.profiles.entries
        if entry.form.remove.data and (entry.form.ae_title.data or "").strip()
    ]
    if removed and not confirmed():
        return _confirm_removal(removed, url_for("admin.aes"))
    changed, error = _save(
        {
            "dicom_ae_profiles": profiles,
            "dicom_restrict_calling_ae": form.restrict.data,
            "dicom_max_matches": _int(form.max_matches.data),
            "dicom_response_charset": form.response_charset.data,
        }
    )
    if error:
        return _render_aes(form, error, 400)
    _saved_message(changed)
    return redirect(url_for("admin.aes"))


def _profile_values(
    form: AesForm, stored: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]] | None:
    """The profiles in TOML form; None (with field errors) when a row lacks its AE title.

    Keys the form does not show (``require_tls``, ``match_keys``, device limits, ...)
    are kept from the ``stored`` profile of the same AE title and host.
    """
    kept = {(str(p.get("ae_title", "")), str(p.get("host", ""))): p for p in stored or []}
    profiles = []
    valid = True
    for entry in form.profiles.entries:
        row: ProfileRow = entry.form
        if row.remove.data:
            continue
        title = (row.ae_title.data or "").strip()
        values = {
            "ae_title": title,
            "host": (row.host.data or "").strip(),
            "response_charset": row.response_charset.data or "",
            "calling_ae_as_station": bool(row.calling_ae_as_station.data),
            "date_window_days": _int(row.date_window_days.data),
            "visible_statuses": list(row.visible_statuses.data or []),
            "max_matches": _int(row.max_matches.data),
        }
        if not title:
            if any(v for k, v in values.items() if k != "ae_title"):
                row.ae_title.errors = [_("Enter the calling AE title, or tick Remove.")]
                valid = False
            # A row left empty (the one for a new profile) is no profile.
            continue
        host = (row.host.data or "").strip()
        profiles.append({**kept.get((title, host), {}), **values})
    return profiles if valid else None


# --------------------------------------------------------------------------- HL7


def _hl7_form(settings: Settings) -> Hl7Form:
    order_status = [
        {"order_control": control, "order_status": order_status, "status": status or REJECT}
        for control, order_status, status in settings.hl7_order_status
    ]
    return Hl7Form(
        formdata=None,
        data={
            "modality_map": [
                {"sent": sent, "modality": modality} for sent, modality in settings.hl7_modality_map
            ]
            + [{}],
            "station_rules": plain_value(settings, "hl7_station_rules") + [{}],
            "order_status": order_status + [{}],
            "accepted_senders": "\n".join(settings.hl7_accepted_senders),
            "protocol_code_component": str(settings.hl7_protocol_code_component),
            "missing_start": settings.hl7_missing_start,
            "station_from_orc18": settings.hl7_station_from_orc18,
            "version": _version(settings, HL7_SETTINGS),
        },
    )


def _render_hl7(form: Hl7Form, error: str = "", status: int = 200) -> ResponseReturnValue:
    defaults = sorted(
        (control, order_status, step.value)
        for (control, order_status), step in DEFAULT_STATUS_TABLE.items()
    )
    return (
        render_template(
            "admin_hl7.html",
            form=form,
            error=error,
            overridden=_stored_names(),
            default_status_table=defaults,
        ),
        status,
    )


@bp.route("/hl7", methods=["GET", "POST"])
@role_required(Role.ADMIN)
def hl7() -> ResponseReturnValue:
    """The HL7 mapping and routing rules; on POST store what changed."""
    effective, problem = _effective()
    form = Hl7Form()
    if not form.is_submitted():
        return _render_hl7(_hl7_form(effective), problem)
    valid = form.validate()
    rows = _hl7_values(form)
    if not valid or rows is None:
        return _render_hl7(form, _("Some values are not valid; see the marked fields."), 400)
    if form.version.data != _version(effective, HL7_SETTINGS):
        return _render_hl7(_hl7_form(effective), _conflict(), 409)
    removed = _removed_hl7_rows(form)
    if removed and not confirmed():
        return _confirm_removal(removed, url_for("admin.hl7"))
    changed, error = _save(rows)
    if error:
        return _render_hl7(form, error, 400)
    _saved_message(changed)
    return redirect(url_for("admin.hl7"))


def _removed_hl7_rows(form: Hl7Form) -> list[str]:
    """The filled rows ticked Remove, as the confirmation page names them."""
    removed = []
    for entry in form.modality_map.entries:
        if entry.form.remove.data and entry.form.sent.data:
            removed.append(_("Modality map: %(sent)s", sent=entry.form.sent.data))
    for entry in form.station_rules.entries:
        if entry.form.remove.data and entry.form.station_ae_title.data:
            removed.append(_("Station rule: %(ae)s", ae=entry.form.station_ae_title.data))
    for entry in form.order_status.entries:
        if entry.form.remove.data and entry.form.order_control.data:
            pair = f"{entry.form.order_control.data}_{entry.form.order_status.data or ''}"
            removed.append(_("Order status: %(pair)s", pair=pair))
    return removed


def _confirm_removal(removed: list[str], back_url: str) -> str:
    return confirmation_page(
        title=_("Remove these rows?"),
        question=_("The services stop using them within a few seconds:"),
        button=_("Remove and save"),
        back_url=back_url,
        details=removed,
        undo=_(
            "To undo, add the rows again on this page; the audit of settings changes"
            " keeps their old values."
        ),
    )


def _rows(
    entries: Sequence[Any], required: str, message: str, make: Callable[[Any], Any]
) -> tuple[list[Any], bool]:
    """The kept rows of a list field: removed and empty ones dropped, incomplete ones marked."""
    kept = []
    valid = True
    for entry in entries:
        row = entry.form
        if row.remove.data:
            continue
        filled = {
            name: (field.data or "").strip()
            for name, field in row._fields.items()
            if name != "remove" and isinstance(field.data, str)
        }
        if not filled.get(required):  # a field not sent at all (a hand-made POST)
            if any(filled.values()):
                row[required].errors = [message]
                valid = False
            continue
        kept.append(make(filled))
    return kept, valid


def _hl7_values(form: Hl7Form) -> dict[str, Any] | None:
    """The page's settings in TOML form; None (with field errors) when a row is incomplete."""
    modality_rows, ok_map = _modality_rows(form)
    rules, ok_rules = _rows(
        form.station_rules.entries,
        "station_ae_title",
        _("Enter the station AE title, or tick Remove."),
        lambda r: {k: v for k, v in r.items() if v},
    )
    order_status, ok_status = _order_status_rows(form)
    if not (ok_map and ok_rules and ok_status):
        return None
    senders = [
        line.strip() for line in (form.accepted_senders.data or "").splitlines() if line.strip()
    ]
    return {
        "hl7_modality_map": {r["sent"]: r["modality"] for r in modality_rows},
        "hl7_station_rules": rules,
        "hl7_order_status": order_status,
        "hl7_accepted_senders": senders,
        "hl7_protocol_code_component": form.protocol_code_component.data,
        "hl7_missing_start": form.missing_start.data,
        "hl7_station_from_orc18": bool(form.station_from_orc18.data),
    }


def _modality_rows(form: Hl7Form) -> tuple[list[dict[str, str]], bool]:
    """The modality map's kept rows; a value sent without its DICOM modality is marked."""
    rows, valid = _rows(
        form.modality_map.entries,
        "sent",
        _("Enter the value sent, or tick Remove."),
        lambda r: r,
    )
    for entry in form.modality_map.entries:
        row = entry.form
        if (row.sent.data or "").strip() and not (row.modality.data or "").strip():
            if not row.remove.data:
                row.modality.errors = [_("Enter the DICOM modality, or tick Remove.")]
                valid = False
    return rows, valid


def _order_status_rows(form: Hl7Form) -> tuple[dict[str, str], bool]:
    """The status table as ``{"NW_SC": "SCHEDULED", ...}`` ("" = reject); rows without a
    status are marked."""
    statuses, valid = _rows(
        form.order_status.entries,
        "order_control",
        _("Enter the order control code, or tick Remove."),
        lambda r: r,
    )
    for entry in form.order_status.entries:
        row = entry.form
        if (row.order_control.data or "").strip() and not row.remove.data and not row.status.data:
            row.status.errors = [_("Choose the step status, or tick Remove.")]
            valid = False
    order_status: dict[str, str] = {}
    if not valid:
        return order_status, False
    for r in statuses:
        status = "" if r["status"] == REJECT else r["status"]
        order_status[f"{r['order_control']}_{r['order_status']}".upper()] = status
    return order_status, valid


# --------------------------------------------------------------------------- reset


@bp.post("/settings/<name>/reset")
@role_required(Role.ADMIN)
def reset(name: str) -> ResponseReturnValue:
    """Drop the page value of one setting: its file or environment value applies again."""
    if name not in EDITABLE:
        abort(404, description=_("This setting cannot be changed on the admin page."))
    endpoint = "admin.aes" if name in AE_SETTINGS else "admin.hl7"
    try:
        with writer().begin() as session:
            dropped = clear_override(session, name, current_user.username, base=state().settings)
            if dropped:
                audit_events.settings_changed(session, current_user.username, [name])
    except SettingsError as exc:
        error = _("%(setting)s: %(reason)s", setting=exc.setting, reason=exc.reason)
        effective, _problem = _effective()
        if endpoint == "admin.aes":
            return _render_aes(_aes_form(effective), error, 400)
        return _render_hl7(_hl7_form(effective), error, 400)
    if dropped:
        flash(_("%(name)s uses the file or environment value again.", name=name), "info")
    else:
        flash(_("%(name)s had no value from this page.", name=name), "info")
    return redirect(url_for(endpoint))
