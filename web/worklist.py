"""The day list page: every scheduled step of one day, filtered, counted, with its status."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_babel.speaklater import LazyString
from flask_login import login_required

from mwl.domain import SpsStatus
from mwl.timezones import site_today, site_zone
from mwl.worklist.daylist import ModalityCount, items_for_day, modality_counts
from web.alerts import firing_for_page
from web.params import day_in_range, day_range_error
from web.store import db_session, state

bp = Blueprint("worklist", __name__)

# Refresh interval of today's list, in seconds: a console shows new orders without
# anyone touching it (a meta refresh, so no JavaScript).
REFRESH_SECONDS = 60

# Longest free-text search accepted: a name and an ID fit; anything longer is not a
# search a person typed.
TEXT_MAX_LENGTH = 64
# Modality (CS) and station AE title (AE) are both at most 16 characters (PS3.5 6.2).
CODE_MAX_LENGTH = 16
_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Status filter value for the steps still to be done (the console's usual view).
OPEN = "open"
OPEN_STATUSES = frozenset(
    {SpsStatus.SCHEDULED, SpsStatus.ARRIVED, SpsStatus.READY, SpsStatus.STARTED, SpsStatus.HELD}
)

# How each status reads on the page; the stored value stays the DICOM defined term.
STATUS_LABELS: dict[SpsStatus, LazyString] = {
    SpsStatus.SCHEDULED: _l("Scheduled"),
    SpsStatus.ARRIVED: _l("Arrived"),
    SpsStatus.READY: _l("Ready"),
    SpsStatus.STARTED: _l("Started"),
    SpsStatus.DEPARTED: _l("Departed"),
    SpsStatus.COMPLETED: _l("Completed"),
    SpsStatus.DISCONTINUED: _l("Discontinued"),
    SpsStatus.CANCELED: _l("Canceled"),
    SpsStatus.HELD: _l("Held"),
}
SEX_LABELS: dict[str, LazyString] = {"F": _l("female"), "M": _l("male"), "O": _l("other")}


@dataclass(frozen=True)
class DayFilters:
    """The filters of the day list as the URL carries them (validated, normalised)."""

    modality: str = ""
    station: str = ""
    status: str = ""  # "", "open" or an SpsStatus value in lower case
    text: str = ""

    def statuses(self) -> frozenset[SpsStatus] | None:
        """The statuses to show, or None for all."""
        if not self.status:
            return None
        if self.status == OPEN:
            return OPEN_STATUSES
        return frozenset({SpsStatus(self.status.upper())})

    def args(self) -> dict[str, str]:
        """Query-string arguments for links that keep these filters."""
        pairs = {
            "modality": self.modality,
            "station": self.station,
            "status": self.status,
            "q": self.text,
        }
        return {name: value for name, value in pairs.items() if value}

    def replaced(self, **changes: str) -> DayFilters:
        """These filters with some changed (for links in the template)."""
        return replace(self, **changes)

    def active(self) -> list[tuple[str, str, DayFilters]]:
        """Each active filter as (label, value shown, the filters without it)."""
        chips: list[tuple[str, str, DayFilters]] = []
        if self.modality:
            chips.append((_("Modality"), self.modality, replace(self, modality="")))
        if self.station:
            chips.append((_("Station AE"), self.station, replace(self, station="")))
        if self.status:
            chips.append((_("Status"), status_filter_label(self.status), replace(self, status="")))
        if self.text:
            chips.append((_("Search"), self.text, replace(self, text="")))
        return chips


def status_filter_label(value: str) -> str:
    """The status select's option text for a filter value (``""``, ``open``, a status)."""
    if not value:
        return _("All statuses")
    if value == OPEN:
        return _("Open (still to do)")
    return str(STATUS_LABELS[SpsStatus(value.upper())])


def status_choices() -> list[tuple[str, str]]:
    """The options of the status select: (value, label)."""
    values = ["", OPEN] + [status.value.lower() for status in SpsStatus]
    return [(value, status_filter_label(value)) for value in values]


def parse_day(value: str | None, today: dt.date) -> dt.date:
    """The ``date`` query parameter as a date; ``today`` when absent or empty.

    Raises
    ------
    werkzeug.exceptions.BadRequest
        When the value is not a ``YYYY-MM-DD`` date.
    """
    if not value:
        return today
    try:
        if len(value) != 10:
            raise ValueError(value)
        day = dt.datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        abort(
            400,
            description=_("The date must be a calendar date written YYYY-MM-DD, e.g. 2026-11-21."),
        )
    if not day_in_range(day):
        abort(400, description=day_range_error())
    return day


def parse_filters(args: Mapping[str, str]) -> DayFilters:
    """Read and check the filters of the query string.

    Parameters
    ----------
    args
        ``request.args``: ``modality``, ``station``, ``status``, ``q``.

    Raises
    ------
    werkzeug.exceptions.BadRequest
        With a message naming the parameter, for a malformed modality or station,
        an unknown status, or a search text that is too long or holds control
        characters.
    """
    modality = args.get("modality", "").strip().upper()
    if modality and not _MODALITY.fullmatch(modality):
        abort(
            400,
            description=_(
                "The modality must be a DICOM modality code of at most %(max)s letters,"
                " digits or underscores, e.g. CT.",
                max=CODE_MAX_LENGTH,
            ),
        )
    station = args.get("station", "").strip()
    if len(station) > CODE_MAX_LENGTH or _CONTROL.search(station) or "\\" in station:
        abort(
            400,
            description=_(
                "The station AE title must be at most %(max)s characters,"
                " without backslashes or control characters.",
                max=CODE_MAX_LENGTH,
            ),
        )
    status = args.get("status", "").strip().lower()
    if status == "all":
        status = ""
    known = [value for value, _label in status_choices() if value]
    if status and status not in known:
        abort(
            400,
            description=_(
                "Unknown status “%(value)s”. Choose one of: %(known)s.",
                value=status[:32],
                known=", ".join(["all", *known]),
            ),
        )
    text = " ".join(args.get("q", "").split())
    if len(text) > TEXT_MAX_LENGTH:
        abort(
            400,
            description=_(
                "The search text is too long: at most %(max)s characters.", max=TEXT_MAX_LENGTH
            ),
        )
    if _CONTROL.search(text):
        abort(400, description=_("The search text must not contain control characters."))
    return DayFilters(modality=modality, station=station, status=status, text=text)


def parse_refresh(value: str | None) -> bool:
    """Whether today's list refreshes itself: on unless ``refresh=off``."""
    if value is None or value in ("", "on"):
        return True
    if value == "off":
        return False
    abort(400, description=_("The refresh parameter must be “on” or “off”."))


@bp.app_template_filter("status_label")
def status_label(status: SpsStatus | str) -> str:
    """A step status as the page shows it (translated); unknown values unchanged."""
    try:
        return str(STATUS_LABELS[SpsStatus(str(status).upper())])
    except (ValueError, KeyError):
        return str(status)


@bp.app_template_filter("sex_label")
def sex_label(sex: str) -> str:
    """Patient's Sex (M, F, O) as a word; other values unchanged."""
    label = SEX_LABELS.get(sex.strip().upper())
    return str(label) if label is not None else sex


@bp.app_template_global("age_text")
def age_text(birth_date: str, on: dt.date) -> str:
    """The patient's age on ``on``: years, or months below two years; "" when unknown.

    ``birth_date`` is a DICOM DA (``YYYYMMDD``); a malformed or future date gives "".
    """
    try:
        born = dt.datetime.strptime(birth_date, "%Y%m%d").date()
    except ValueError:
        return ""
    if born > on:
        return ""
    months = (on.year - born.year) * 12 + on.month - born.month - (on.day < born.day)
    if months < 24:
        return ngettext("%(num)s month", "%(num)s months", months)
    return ngettext("%(num)s year", "%(num)s years", months // 12)


def local_today() -> dt.date:
    """Today in the site's time zone (``timezone``), like the stored starts."""
    return site_today(site_zone(state().settings.timezone))


def open_count(count: ModalityCount) -> int:
    """How many of a modality's steps are still to be done."""
    return sum(n for status, n in count.by_status.items() if status in OPEN_STATUSES)


@bp.get("/")
@login_required
def day() -> ResponseReturnValue:
    """The worklist of one day (``?date=YYYY-MM-DD``, default today), filtered.

    Query parameters: ``date``, ``modality``, ``station``, ``status`` (``all``,
    ``open`` or a step status), ``q`` (patient name, patient ID or accession number)
    and ``refresh=off``. A GET form sets them, so each room's console can bookmark
    its own view, e.g. ``/?modality=CT&station=CT01``.
    """
    today = local_today()
    shown = parse_day(request.args.get("date"), today)
    filters = parse_filters(request.args)
    refresh = parse_refresh(request.args.get("refresh"))

    def link_args(on: dt.date, chosen: DayFilters, refreshing: bool) -> dict[str, Any]:
        # Today's link carries no date, so a console left on it overnight moves on to
        # the next day by itself (the meta refresh reloads this link).
        args = dict(chosen.args())
        if on != today:
            args["date"] = on.isoformat()
        if not refreshing:
            args["refresh"] = "off"
        return args

    def link(on: dt.date, chosen: DayFilters, refreshing: bool = refresh) -> str:
        return url_for("worklist.day", **link_args(on, chosen, refreshing))

    # The filter form sends empty fields and today's date: the canonical address is
    # the one to bookmark on a console, and the one the page refreshes to.
    if request.args.to_dict() != link_args(shown, filters, refresh):
        return redirect(link(shown, filters))

    session = db_session()
    items = items_for_day(
        session,
        shown,
        modality=filters.modality,
        station=filters.station,
        statuses=filters.statuses(),
        text=filters.text,
    )
    counts = modality_counts(
        session, shown, station=filters.station, statuses=filters.statuses(), text=filters.text
    )
    day_total = (
        sum(c.total for c in counts)
        if not (filters.station or filters.status or filters.text)
        else sum(c.total for c in modality_counts(session, shown))
    )
    previous_day = shown - dt.timedelta(days=1) if shown > dt.date.min else None
    next_day = shown + dt.timedelta(days=1) if shown < dt.date.max else None
    return render_template(
        "worklist.html",
        alerts=firing_for_page(),
        items=items,
        counts=counts,
        open_count=open_count,
        day_total=day_total,
        filters=filters,
        link=link,
        status_choices=status_choices(),
        day=shown,
        today=today,
        previous_day=previous_day,
        next_day=next_day,
        refresh=refresh,
        refresh_seconds=REFRESH_SECONDS if shown == today and refresh else None,
        refresh_url=link(shown, filters),
        refreshed_at=dt.datetime.now(),
        text_max_length=TEXT_MAX_LENGTH,
        code_max_length=CODE_MAX_LENGTH,
    )
