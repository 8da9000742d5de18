"""The modalities that query the worklist: today's overview, each AE's history, test as an AE."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, abort, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import login_required
from flask_wtf import FlaskForm
from wtforms import BooleanField, DateField, IntegerField, StringField
from wtforms.validators import (
    DataRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)

from mwl.admin.overrides import apply_overrides, load_overrides
from mwl.domain import KeyMatch, MatchKind, SpsStatus, WorklistItem, WorklistQuery
from mwl.errors import SettingsError
from mwl.operations.activity import scanner_activity
from mwl.operations.querylog import (
    AskedKey,
    LoggedQuery,
    ae_history,
    latest_query,
    logged_query,
    typical_key_sets,
    typical_keys_by_ae,
)
from mwl.worklist.daylist import items_for_day
from mwl.worklist.device import DeviceLimits, check_item, limits_for_ae
from mwl.worklist.matching import find_items
from web.params import cursor, day_in_range, day_range_error
from web.store import QueryPreviewer, db_session, state

bp = Blueprint("scanners", __name__)

HISTORY_PAGE = 50
# How many of an AE's newest queries its "typical keys" are drawn from.
TYPICAL_OF_LAST = 50
# At most this many steps are explained for one accession number or patient ID.
MAX_EXPLAINED = 10

# AE title: 1-16 characters of the default repertoire, no backslash (PS3.5 6.2, VR AE).
_AE_TITLE = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"
# Text keys: printable, no control characters (a modality cannot send them either).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
_HOST = r"^[0-9A-Za-z.:%\[\]-]*$"

# Keywords and the pseudo-keywords of mwl.dicom.preview, for people.
KEY_LABELS: Mapping[str, Any] = {
    "PatientName": _l("Patient's name"),
    "PatientID": _l("Patient ID"),
    "IssuerOfPatientID": _l("Issuer of patient ID"),
    "PatientBirthDate": _l("Birth date"),
    "PatientSex": _l("Sex"),
    "AccessionNumber": _l("Accession number"),
    "StudyInstanceUID": _l("Study instance UID"),
    "RequestedProcedureID": _l("Requested procedure ID"),
    "RequestedProcedureDescription": _l("Requested procedure description"),
    "RequestedProcedurePriority": _l("Priority"),
    "ReferringPhysicianName": _l("Referring physician"),
    "Modality": _l("Modality"),
    "ScheduledStationAETitle": _l("Scheduled station AE title"),
    "ScheduledStationName": _l("Scheduled station name"),
    "ScheduledProcedureStepLocation": _l("SPS location"),
    "ScheduledProcedureStepStartDate": _l("SPS start date"),
    "ScheduledProcedureStepStartTime": _l("SPS start time"),
    "ScheduledProcedureStepStartDateTime": _l("SPS start (date and time)"),
    "ScheduledProcedureStepID": _l("SPS ID"),
    "ScheduledProcedureStepDescription": _l("SPS description"),
    "ScheduledPerformingPhysicianName": _l("Performing physician"),
    "ScheduledProcedureStepStatus": _l("SPS status"),
    "MaxMatches": _l("Most matches"),
    "CallingAETitle": _l("Calling AE title allowed"),
    "Identifier": _l("Identifier"),
}
_SPS_START_DATE = "ScheduledProcedureStepStartDate"
_DATE_KEYWORDS = frozenset({_SPS_START_DATE, "PatientBirthDate"})


def local_midnight_utc(now: dt.datetime | None = None) -> dt.datetime:
    """Start of today in the server's local time, as the naive UTC the logs store."""
    local = (now or dt.datetime.now(dt.UTC)).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.astimezone(dt.UTC).replace(tzinfo=None)


def key_label(keyword: str) -> str:
    """A DICOM keyword (or a preview pseudo-keyword) as people call it."""
    label = KEY_LABELS.get(keyword)
    return str(label) if label is not None else keyword


def _date_text(value: str) -> str:
    """``YYYYMMDD`` and ``YYYYMMDD-YYYYMMDD`` as ISO dates; anything else unchanged."""

    def one(part: str) -> str:
        if len(part) == 8 and part.isdigit():
            return f"{part[:4]}-{part[4:6]}-{part[6:]}"
        return part

    if "-" in value:
        low, _sep, high = value.partition("-")
        return f"{one(low)} – {one(high)}".strip()
    return one(value)


def keys_text(keys: Iterable[AskedKey], relative: bool = True) -> str:
    """The matching keys of a query in words: ``Modality = CT, SPS start date = today``.

    With ``relative``, a date that named the query's own day reads "today" (a
    habit); without, the date itself (one query of the history).
    """
    parts = []
    for key in keys:
        if key.today and relative:
            value = _("today")
        elif key.keyword in _DATE_KEYWORDS:
            value = _date_text(key.value)
        else:
            value = key.value
        parts.append(f"{key_label(key.keyword)} = {value}")
    return ", ".join(parts) if parts else _("no matching key (everything)")


def status_text(status: int | None) -> str:
    """A C-FIND final status in words (PS3.4 Table K.4-1; PS3.7 C.5 for 0x0124)."""
    if status is None:
        return _("Association rejected: this calling AE title may not connect")
    if status in (0x0000, 0xFF00, 0xFF01):
        return _("Success")
    if status == 0xFE00:
        return _("Cancelled by the modality")
    if status == 0xA900:
        return _("Failure 0xA900: the identifier does not match (a key has a bad value)")
    if status == 0x0124:
        return _("Refused 0x0124: this AE title may not query from this host")
    if 0xC000 <= status <= 0xCFFF:
        return _("Failure 0x%(code)04X: unable to process", code=status)
    return _("Status 0x%(code)04X", code=status)


def status_ok(status: int | None) -> bool:
    """Whether a C-FIND ended normally (success; pending values are logged as success)."""
    return status in (0x0000, 0xFF00, 0xFF01)


def _printable_field(label: Any, max_length: int) -> StringField:
    """A free-text key of the test form: printable characters, bounded length."""
    return StringField(
        label,
        validators=[
            Length(max=max_length),
            Regexp(_PRINTABLE, message=_l("Only printable characters are allowed.")),
        ],
    )


def _within_calendar(_form: FlaskForm, field: DateField) -> None:
    if field.data and not day_in_range(field.data):
        raise ValidationError(day_range_error())


class ScannerTestForm(FlaskForm):
    """Run a worklist query as a calling AE (a GET form: it changes nothing)."""

    class Meta:
        csrf = False

    ae = StringField(
        _l("Calling AE title"),
        validators=[
            DataRequired(_l("Give the calling AE title of the scanner.")),
            Length(max=16, message=_l("An AE title has at most 16 characters.")),
            Regexp(
                _AE_TITLE,
                message=_l("An AE title holds printable ASCII characters only, no backslash."),
            ),
        ],
    )
    host = StringField(
        _l("Calling from IP address"),
        validators=[
            Optional(),
            Length(max=64),
            Regexp(_HOST, message=_l("Give an IP address, e.g. 10.0.0.5.")),
        ],
    )
    query = IntegerField(_l("Stored query"), validators=[Optional(), NumberRange(min=1)])
    as_sent = BooleanField(_l("Send the stored query exactly as the scanner sent it"))
    modality = _printable_field(_l("Modality"), 64)
    station = _printable_field(_l("Scheduled station AE title"), 64)
    date_from = DateField(
        _l("SPS start date from"),
        validators=[Optional(), _within_calendar],
        format="%Y-%m-%d",
    )
    date_to = DateField(
        _l("SPS start date to"), validators=[Optional(), _within_calendar], format="%Y-%m-%d"
    )
    patient_id = _printable_field(_l("Patient ID"), 64)
    patient_name = _printable_field(_l("Patient's name"), 200)
    accession = _printable_field(_l("Accession number"), 64)
    why = StringField(
        _l("Accession number or patient ID"),
        validators=[
            Length(max=64),
            Regexp(_PRINTABLE, message=_l("Only printable characters are allowed.")),
        ],
    )
    step = IntegerField(_l("Step"), validators=[Optional(), NumberRange(min=1)])

    def validate_date_to(self, field: DateField) -> None:
        """The range must not end before it starts."""
        if field.data and self.date_from.data and field.data < self.date_from.data:
            raise ValidationError(_("The end date is before the start date."))


def _test_form(data: Mapping[str, Any] | None = None) -> ScannerTestForm:
    if data is None:
        return ScannerTestForm(formdata=request.args)
    return ScannerTestForm(formdata=None, data=data)


def _parse_day(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def form_values(query: LoggedQuery | None, today: dt.date) -> dict[str, Any]:
    """The test form's fields filled from a stored query's matching keys.

    An SPS Start Date that named the day of the query becomes today's date: the
    scanner asks for "today", whichever day it is.
    """
    values: dict[str, Any] = {"as_sent": False}
    if query is None:
        return values
    values["query"] = query.key
    values["host"] = query.peer_host
    fields = {
        "Modality": "modality",
        "ScheduledStationAETitle": "station",
        "PatientID": "patient_id",
        "PatientName": "patient_name",
        "AccessionNumber": "accession",
    }
    for key in query.keys:
        if key.keyword in fields:
            values[fields[key.keyword]] = key.value
        elif key.keyword == _SPS_START_DATE:
            if key.today:
                values["date_from"] = values["date_to"] = today
            else:
                low, sep, high = key.value.partition("-")
                values["date_from"] = _parse_day(low.strip())
                values["date_to"] = _parse_day(high.strip()) if sep else values["date_from"]
    return values


def _date_key(start: dt.date | None, end: dt.date | None) -> str:
    """The form's date range as an SPS Start Date value (DA, or a range of DA)."""
    low = start.strftime("%Y%m%d") if start else ""
    high = end.strftime("%Y%m%d") if end else ""
    if low and low == high:
        return low
    if not low and not high:
        return ""
    return f"{low}-{high}"


def form_keys(form: ScannerTestForm) -> dict[str, str]:
    """The form's matching keys by DICOM keyword; an empty field asks for anything."""
    return {
        "Modality": (form.modality.data or "").strip(),
        "ScheduledStationAETitle": (form.station.data or "").strip(),
        _SPS_START_DATE: _date_key(form.date_from.data, form.date_to.data),
        "PatientID": (form.patient_id.data or "").strip(),
        "PatientName": (form.patient_name.data or "").strip(),
        "AccessionNumber": (form.accession.data or "").strip(),
    }


def _checked_ae(value: str | None) -> str:
    ae = (value or "").strip()
    if not re.match(_AE_TITLE, ae):
        abort(400, description=_("Give a calling AE title of 1 to 16 printable characters."))
    return ae


@dataclass(frozen=True)
class ConditionView:
    """One condition of a query (or its verdict on a step) as the page shows it."""

    label: str
    asked: str
    source: str
    held: str = ""
    passed: bool = True
    sentence: str = ""


def _asked_text(condition: Any) -> str:
    kind, asked = condition.kind, condition.asked
    if condition.keyword in _DATE_KEYWORDS:
        asked = _date_text(asked)
    if kind == "wildcard":
        return _("matches %(pattern)s", pattern=asked)
    if kind == "list":
        return _("one of %(values)s", values=asked)
    if kind == "range":
        if condition.low and condition.high:
            return _("%(low)s to %(high)s", low=condition.low, high=condition.high)
        if condition.low:
            return _("from %(low)s", low=condition.low)
        return _("up to %(high)s", high=condition.high)
    if kind == "hidden":
        return _("any status except %(values)s", values=asked)
    if kind == "limit":
        return _("at most %(count)s", count=asked)
    if kind == "allowed":
        return _("%(ae)s may query", ae=asked)
    if kind == "ignored":
        return _ignored_text(condition)
    if kind == "invalid":
        return _("refused: %(reason)s", reason=asked)
    return str(asked)


def _ignored_text(condition: Any) -> str:
    """Why a key of the query was not matched on (the codes of mwl.dicom.query)."""
    reason = getattr(condition, "reason", "")
    if reason == "on-request":
        return _("ignored: matched only for AEs whose profile turns matching on for it")
    if reason == "not-enumerated":
        return _(
            "ignored: %(value)s is not one of its values (%(allowed)s)",
            value=condition.asked,
            allowed=condition.allowed,
        )
    return _("ignored: the broker does not match on this key")


def _source_text(source: str) -> str:
    if source == "profile":
        return _("set by this AE's profile")
    if source == "default":
        return _("broker default")
    return _("in the query")


def condition_view(condition: Any) -> ConditionView:
    """A condition of the effective query for the page."""
    return ConditionView(
        key_label(condition.keyword), _asked_text(condition), _source_text(condition.source)
    )


def verdict_view(verdict: Any) -> ConditionView:
    """A verdict on one step for the page, with a sentence when the step fails it."""
    condition = verdict.condition
    view = condition_view(condition)
    held = verdict.held if condition.keyword not in _DATE_KEYWORDS else _date_text(verdict.held)
    sentence = ""
    if not verdict.passed:
        label = view.label
        if condition.kind == "hidden":
            sentence = _(
                "%(label)s: steps that are %(held)s are not shown unless the query asks for"
                " that status.",
                label=label,
                held=held,
            )
        elif condition.kind == "list" and condition.keyword == "ScheduledProcedureStepStatus":
            sentence = _(
                "%(label)s: only %(asked)s are shown, the item is %(held)s.",
                label=label,
                asked=condition.asked,
                held=held,
            )
        elif condition.kind == "limit":
            sentence = _(
                "%(label)s: the AE gets at most %(asked)s items, this one comes as number"
                " %(held)s.",
                label=label,
                asked=condition.asked,
                held=held,
            )
        elif condition.kind == "allowed":
            sentence = _(
                "%(label)s: %(asked)s may not query; allowed are %(held)s.",
                label=label,
                asked=condition.asked,
                held=held,
            )
        elif condition.kind == "invalid":
            sentence = _(
                "The query is refused before any item is looked at: %(reason)s",
                reason=condition.asked,
            )
        elif held:
            sentence = _(
                "%(label)s: asked %(asked)s, the item has %(held)s.",
                label=label,
                asked=view.asked,
                held=held,
            )
        else:
            sentence = _(
                "%(label)s: asked %(asked)s, the item has no value.",
                label=label,
                asked=view.asked,
            )
    return ConditionView(view.label, view.asked, view.source, held, verdict.passed, sentence)


@dataclass(frozen=True)
class ExplanationView:
    """Why one step is (or is not) in the answer."""

    item: WorklistItem
    returned: bool
    verdicts: tuple[ConditionView, ...]

    @property
    def failed(self) -> tuple[ConditionView, ...]:
        """The conditions that leave the step out."""
        return tuple(v for v in self.verdicts if not v.passed)


def _steps_for(session: Any, text: str) -> list[WorklistItem]:
    """Stored steps with this accession number or patient ID, whatever their status."""
    found: dict[int, WorklistItem] = {}
    for attribute in ("accession_number", "patient_id"):
        query = WorklistQuery(
            keys=(KeyMatch(attribute, MatchKind.SINGLE, (text,)),),
            statuses=frozenset(SpsStatus),
            limit=MAX_EXPLAINED,
        )
        for item in find_items(session, query):
            found.setdefault(item.step_key, item)
    return list(found.values())[:MAX_EXPLAINED]


@bp.get("/scanners")
@login_required
def index() -> str:
    """One line per calling AE title: last seen, queries, typical keys, matches today."""
    session = db_session()
    scanners = scanner_activity(session, local_midnight_utc())
    typical = typical_keys_by_ae(session, last=TYPICAL_OF_LAST)
    return render_template(
        "scanners.html",
        scanners=scanners,
        typical=typical,
        keys_text=keys_text,
        typical_of_last=TYPICAL_OF_LAST,
    )


@bp.get("/scanners/history")
@login_required
def history() -> str:
    """One calling AE: its queries, newest first (``?before=KEY`` pages), and the test form."""
    ae = _checked_ae(request.args.get("ae"))
    before = cursor(request.args.get("before"))
    session = db_session()
    found = ae_history(session, ae, limit=HISTORY_PAGE + 1, before_key=before)
    if not found and before is None:
        abort(404, description=_("No query from the calling AE title %(ae)s is logged.", ae=ae))
    page = found[:HISTORY_PAGE]
    older = page[-1].key if len(found) > HISTORY_PAGE else None
    latest = latest_query(session, ae, with_identifier=True)
    values = form_values(latest, dt.date.today())
    values["ae"] = ae
    return render_template(
        "scanner.html",
        ae=ae,
        queries=page,
        older=older,
        before=before,
        typical=typical_key_sets(session, ae, last=TYPICAL_OF_LAST),
        typical_of_last=TYPICAL_OF_LAST,
        latest=latest,
        form=_test_form(values),
        keys_text=keys_text,
        status_text=status_text,
        status_ok=status_ok,
        previewer=state().query_previewer,
    )


@bp.get("/scanners/test")
@login_required
def test() -> ResponseReturnValue:
    """Run the query an AE sends (or the edited keys) and show what it would get, and why not."""
    previewer = state().query_previewer
    if not request.args:
        # A blank form to test any AE title, e.g. a scanner that never queried.
        blank = _test_form({})
        return render_template("scanner_test.html", form=blank, previewer=previewer, result=None)
    form = _test_form()
    context: dict[str, Any] = {
        "form": form,
        "previewer": previewer,
        "key_label": key_label,
        "result": None,
    }
    if not form.validate():
        return render_template("scanner_test.html", **context), 400
    ae = form.ae.data.strip()
    context["ae"] = ae
    if previewer is None:
        return render_template("scanner_test.html", **context), 503
    session = db_session()
    base, usable = _base_query(form, ae)
    if not usable:
        return render_template("scanner_test.html", **context), 400
    if form.as_sent.data and base is not None:
        identifier_json = base.identifier_json
    else:
        identifier_json = previewer.identifier_with_keys(
            base.identifier_json if base else "", form_keys(form)
        )
    host = (form.host.data or "").strip()
    result = previewer.preview(ae, identifier_json, host)
    returned = {p.step_key for p in result.items}
    kept = []
    if base is not None and not form.as_sent.data:
        shown = set(form_keys(form))
        kept = [key for key in base.keys if key.keyword not in shown]
    day = _day_of(form)
    missing = [i for i in items_for_day(session, day) if i.step_key not in returned]
    explanations, asked_why = _explanations(
        previewer, session, ae, identifier_json, host, form, returned
    )
    context.update(
        base=base,
        result=result,
        status_text=status_text,
        conditions=[condition_view(c) for c in result.conditions],
        kept=kept,
        keys_text=keys_text,
        day=day,
        missing=missing,
        explanations=explanations,
        asked_why=asked_why,
        test_args=_args_without("why", "step"),
        **_device_context(session, ae, host, result.items),
    )
    return render_template("scanner_test.html", **context)


def _device_context(session: Any, ae: str, host: str, items: Iterable[Any]) -> dict[str, Any]:
    """The device profile's verdict on each item of the answer (none without limits)."""
    limits = _device_limits(session, ae, host)
    findings = {p.step_key: check_item(p.item, limits) for p in items} if limits else {}
    return {
        "limits": limits,
        "findings": findings,
        "failing": sum(1 for found in findings.values() if found),
        "finding_text": finding_text,
    }


def _device_limits(session: Any, ae: str, host: str) -> DeviceLimits | None:
    """What the device querying as ``ae`` accepts, by its profile in force (page values too)."""
    try:
        settings = apply_overrides(state().settings, load_overrides(session))
    except SettingsError:
        settings = state().settings
    return limits_for_ae(settings, ae, host)


def finding_text(finding: Any) -> str:
    """One check of the device profile that a value fails, for people."""
    label = key_label(finding.keyword)
    if finding.problem == "missing":
        return _("%(key)s is empty: the device requires it and drops the item", key=label)
    if finding.problem == "too long":
        return _(
            "%(key)s is longer than %(limit)s characters: truncated", key=label, limit=finding.limit
        )
    if finding.problem == "component too long":
        return _(
            "%(key)s has a name component longer than %(limit)s characters: truncated",
            key=label,
            limit=finding.limit,
        )
    if finding.problem == "forbidden character":
        return _(
            "%(key)s holds characters the device refuses: %(chars)s", key=label, chars=finding.limit
        )
    return _(
        "%(key)s has characters outside %(charset)s: replaced", key=label, charset=finding.limit
    )


def _base_query(form: ScannerTestForm, ae: str) -> tuple[LoggedQuery | None, bool]:
    """The stored query the test starts from, and whether the form can go on with it.

    The one named by the form, else the AE's latest with an identifier; None when
    the AE has none (the test then starts from a default identifier).
    """
    session = db_session()
    if form.query.data:
        base = logged_query(session, form.query.data)
        if base is None:
            form.query.errors = [_("There is no stored query with this number.")]
            return None, False
    else:
        base = latest_query(session, ae, with_identifier=True)
    if form.as_sent.data and (base is None or not base.identifier_json):
        form.as_sent.errors = [
            _("No query of this AE title is stored: fill in the keys to send instead.")
        ]
        return None, False
    return base, True


def _day_of(form: ScannerTestForm) -> dt.date:
    """The day whose steps are offered for "why is it missing": the one asked, else today."""
    start: dt.date | None = form.date_from.data
    end: dt.date | None = form.date_to.data
    if start and (end is None or end == start):
        return start
    return dt.date.today()


def _explanations(
    previewer: QueryPreviewer,
    session: Any,
    ae: str,
    identifier_json: str,
    host: str,
    form: ScannerTestForm,
    returned: set[int],
) -> tuple[list[ExplanationView], bool]:
    keys: list[int] = []
    why = (form.why.data or "").strip()
    if form.step.data:
        keys.append(form.step.data)
    if why:
        keys.extend(item.step_key for item in _steps_for(session, why))
    views = []
    for key in dict.fromkeys(keys):  # once each, in order
        explanation = previewer.explain(ae, identifier_json, key, host)
        if explanation is None:
            continue
        views.append(
            ExplanationView(
                explanation.item,
                key in returned,
                tuple(verdict_view(v) for v in explanation.verdicts),
            )
        )
    return views, bool(why or form.step.data)


def _args_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in request.args.items() if k not in names}


__all__ = ["bp", "local_midnight_utc"]


def device_findings_for(items: Sequence[WorklistItem]) -> dict[int, list[Any]]:
    """Per step key, what each item's station device would drop or truncate (a page of them).

    The profiles are read once and each station's limits worked out once, so a page of
    a hundred rows costs one settings read, not a hundred.
    """
    session = db_session()
    try:
        settings = apply_overrides(state().settings, load_overrides(session))
    except SettingsError:
        settings = state().settings
    limits: dict[str, DeviceLimits | None] = {}
    found: dict[int, list[Any]] = {}
    for item in items:
        ae = item.scheduled_station_ae_title
        if ae not in limits:
            limits[ae] = limits_for_ae(settings, ae, "") if ae else None
        device = limits[ae]
        if device is not None:
            findings = check_item(item, device)
            if findings:
                found[item.step_key] = findings
    return found


def device_findings(item: WorklistItem) -> list[Any]:
    """What the device of ``item``'s station would drop or truncate (its AE profile)."""
    limits = _device_limits(db_session(), item.scheduled_station_ae_title, "")
    return check_item(item, limits) if limits is not None else []


@bp.app_context_processor
def _device_check_helpers() -> dict[str, Any]:
    # For the item page's note (templates/_device_checks.html), whichever blueprint renders it.
    return {"device_findings": device_findings, "finding_text": finding_text}
