"""The watchdog on the page: alerts firing and past, and the thresholds (live settings)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, FieldList, FloatField, HiddenField, IntegerField, StringField
from wtforms.validators import NumberRange, Optional, Regexp

from mwl.admin.users import Role
from mwl.config import Settings
from mwl.operations.watchdog import Alert, firing_alerts, recent_alerts
from web.admin import (
    WATCHDOG_SETTINGS,
    _conflict,
    _effective,
    _save,
    _saved_message,
    _stored_names,
    _version,
)
from web.roles import role_required
from web.store import db_session

bp = Blueprint("alerts", __name__)


def alert_text(alert: Alert) -> str:
    """The alert in the reader's language, from its kind and figures (never patient data)."""
    d: dict[str, Any] = alert.details
    subject = alert.subject
    if alert.kind == "hl7_silent":
        return _("No HL7 message for %(minutes)s minutes.", minutes=d.get("minutes", "?"))
    if alert.kind == "scanner_silent":
        return _(
            "%(ae)s has not queried the worklist for %(minutes)s minutes.",
            ae=subject,
            minutes=d.get("minutes", "?"),
        )
    if alert.kind == "scanner_failing":
        return _(
            "The last %(count)s worklist queries of %(ae)s failed (status %(status)s).",
            count=d.get("count", "?"),
            ae=subject,
            status=d.get("status", "?"),
        )
    if alert.kind == "outbox_backlog":
        return _(
            "%(count)s RIS status messages are waiting, the oldest for %(minutes)s minutes.",
            count=d.get("count", "?"),
            minutes=d.get("minutes", "?"),
        )
    if alert.kind == "missing_station":
        return _(
            "%(count)s %(modality)s steps today have no Scheduled Station AE Title.",
            count=d.get("count", "?"),
            modality=subject,
        )
    if alert.kind == "overdue_steps":
        return _(
            "%(count)s steps for %(station)s are still scheduled %(minutes)s minutes or more"
            " after their start.",
            count=d.get("count", "?"),
            station=subject,
            minutes=d.get("threshold", "?"),
        )
    return alert.summary


def firing_for_page() -> list[tuple[Alert, str]]:
    """The alerts firing now with their text, for the day list's banner."""
    return [(a, alert_text(a)) for a in firing_alerts(db_session())]


@bp.get("/alerts")
@role_required(Role.VIEWER)
def index() -> str:
    """What the watchdog has noticed: firing now, then the latest ones resolved."""
    recent = recent_alerts(db_session(), limit=100)
    return render_template(
        "alerts.html",
        firing=[(a, alert_text(a)) for a in recent if a.state == "firing"],
        resolved=[(a, alert_text(a)) for a in recent if a.state != "firing"],
    )


class WatchdogForm(FlaskForm):  # type: ignore[misc]
    """The watchdog's thresholds; 0 turns a check off."""

    hours = FieldList(
        StringField(
            validators=[
                Optional(),
                Regexp(r"^\s*\d{1,2}\s*-\s*\d{1,2}\s*$", message=_l("Hours such as 07-19.")),
            ]
        ),
        min_entries=7,
        max_entries=7,
    )
    hl7_silent_minutes = FloatField(
        _l("HL7 feed silent for (minutes)"), validators=[NumberRange(min=0)]
    )
    scanner_silent_minutes = FloatField(
        _l("A scanner silent for (minutes)"), validators=[NumberRange(min=0)]
    )
    scanner_failures = IntegerField(
        _l("Failed queries in a row"), validators=[NumberRange(min=0, max=1000)]
    )
    outbox_minutes = FloatField(
        _l("RIS message waiting for (minutes)"), validators=[NumberRange(min=0)]
    )
    overdue_minutes = FloatField(
        _l("Step still scheduled after its start (minutes)"), validators=[NumberRange(min=0)]
    )
    missing_station = BooleanField(_l("Warn about today's steps without a station AE title"))
    version = HiddenField()


def _form_of(settings: Settings) -> WatchdogForm:
    return WatchdogForm(
        formdata=None,
        data={
            "hours": list(settings.watchdog_hours),
            "hl7_silent_minutes": settings.watchdog_hl7_silent_minutes,
            "scanner_silent_minutes": settings.watchdog_scanner_silent_minutes,
            "scanner_failures": settings.watchdog_scanner_failures,
            "outbox_minutes": settings.watchdog_outbox_minutes,
            "overdue_minutes": settings.watchdog_overdue_minutes,
            "missing_station": settings.watchdog_missing_station,
            "version": _version(settings, WATCHDOG_SETTINGS),
        },
    )


def _page(form: WatchdogForm, error: str = "", status: int = 200) -> ResponseReturnValue:
    page = render_template(
        "alerts_settings.html",
        form=form,
        error=error,
        # Babel's names, Monday first as the setting is.
        weekdays=[get_locale().days["format"]["wide"][day] for day in range(7)],
        overridden=_stored_names(),
    )
    return page, status


@bp.route("/alerts/settings", methods=["GET", "POST"])
@role_required(Role.ADMIN)
def settings() -> ResponseReturnValue:
    """The watchdog's thresholds; on POST store what changed (used at the next round)."""
    effective, problem = _effective()
    form = WatchdogForm()
    if not form.is_submitted():
        return _page(_form_of(effective), problem)
    if not form.validate():
        return _page(form, _("Some values are not valid; see the marked fields."), 400)
    if form.version.data != _version(effective, WATCHDOG_SETTINGS):
        return _page(_form_of(effective), _conflict(), 409)
    changed, error = _save(
        {
            "watchdog_hours": [str(h or "").strip().replace(" ", "") for h in form.hours.data],
            "watchdog_hl7_silent_minutes": float(form.hl7_silent_minutes.data or 0),
            "watchdog_scanner_silent_minutes": float(form.scanner_silent_minutes.data or 0),
            "watchdog_scanner_failures": int(form.scanner_failures.data or 0),
            "watchdog_outbox_minutes": float(form.outbox_minutes.data or 0),
            "watchdog_overdue_minutes": float(form.overdue_minutes.data or 0),
            "watchdog_missing_station": bool(form.missing_station.data),
        }
    )
    if error:
        return _page(form, error, 400)
    _saved_message(changed)
    return redirect(url_for("alerts.settings"))
