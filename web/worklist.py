"""The day list page: the scheduled steps of a day or range, filtered, sorted, paged, live.

Filtering, sorting, paging and counting are SQL (:mod:`mwl.worklist.daylist`); the
page polls a small JSON endpoint (``/worklist/changes``) instead of reloading itself,
so what staff typed, ticked or scrolled to stays put.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, abort, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_babel.speaklater import LazyString

from mwl.admin.users import Role
from mwl.domain import SpsStatus, WorklistItem
from mwl.orders.edits import MANUAL_STATUSES
from mwl.timezones import site_today, site_zone
from mwl.worklist.daylist import (
    URGENT,
    DayPage,
    DayQuery,
    DaySort,
    ModalityCount,
    count_steps,
    day_page,
    day_version,
    modality_counts,
)
from web.alerts import firing_for_page
from web.display import STATUS_LABELS, step_status_text
from web.params import (
    PAGE_SIZE_DEFAULT,
    day_in_range,
    day_range_error,
    page_number,
    page_size,
)
from web.roles import has_role, role_required
from web.scanners import device_findings_for
from web.store import db_session, state

bp = Blueprint("worklist", __name__)

# How often an open page asks whether its list changed, in seconds: a console shows
# new orders without anyone touching it. The check is one aggregate query, so 20
# open consoles cost about one request a second (bench/day_list.py).
POLL_SECONDS = 10
# Longest range of days one page may show: a quarter is plenty for a look back; the
# bound keeps a typo ("2062") from asking for decades.
RANGE_MAX_DAYS = 92

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

# How each status reads on the page: one table, in web.display.
SEX_LABELS: dict[str, LazyString] = {"F": _l("female"), "M": _l("male"), "O": _l("other")}
# The marker of an urgent step (Requested Procedure Priority): a word, not a colour.
PRIORITY_LABELS: dict[str, LazyString] = {"STAT": _l("STAT"), "HIGH": _l("Urgent")}
# The priority filter: the value in the URL -> the stored priorities it keeps.
PRIORITY_FILTERS: dict[str, frozenset[str]] = {"urgent": URGENT, "stat": frozenset({"STAT"})}
# The texts of every row, translated once per page (as templates where a row's
# values go in): a 100-row page would otherwise ask the catalog some 500 times.
ROW_TEXTS: dict[str, LazyString] = {
    "select": _l("Select %(name)s at %(time)s"),
    "no_name": _l("(no name)"),
    "why": _l("Why not?"),
    "why_ae": _l("(%(name)s on the list of %(ae)s)"),
    "why_any": _l("(%(name)s on a scanner’s list)"),
    "test": _l("Test"),
    "test_ae": _l("as scanner %(ae)s"),
    "test_any": _l("as a scanner"),
}
SORT_LABELS: dict[DaySort, LazyString] = {
    DaySort.TIME: _l("Time"),
    DaySort.PRIORITY: _l("Priority"),
    DaySort.PATIENT: _l("Patient"),
    DaySort.PROCEDURE: _l("Procedure"),
    DaySort.ACCESSION: _l("Accession No."),
    DaySort.MODALITY: _l("Modality"),
    DaySort.STATION: _l("Station AE"),
    DaySort.STATUS: _l("Status"),
}


@dataclass(frozen=True)
class DayFilters:
    """The filters of the day list as the URL carries them (validated, normalised)."""

    modality: str = ""
    station: str = ""
    status: str = ""  # "", "open" or an SpsStatus value in lower case
    text: str = ""
    priority: str = ""  # "", or a key of PRIORITY_FILTERS

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
            "priority": self.priority,
        }
        return {name: value for name, value in pairs.items() if value}

    def priorities(self) -> frozenset[str] | None:
        """The stored priorities to show, or None for all."""
        return PRIORITY_FILTERS.get(self.priority)

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
        if self.priority:
            label = priority_filter_label(self.priority)
            chips.append((_("Priority"), label, replace(self, priority="")))
        return chips

    def cleared(self) -> DayFilters:
        """No filter at all."""
        return DayFilters()


def priority_filter_label(value: str) -> str:
    """The priority select's option text for a filter value."""
    if value == "urgent":
        return _("STAT and urgent")
    if value == "stat":
        return _("STAT only")
    return _("All priorities")


def priority_choices() -> list[tuple[str, str]]:
    """The options of the priority select: (value, label)."""
    return [(value, priority_filter_label(value)) for value in ("", *PRIORITY_FILTERS)]


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
    priority = args.get("priority", "").strip().lower()
    if priority and priority not in PRIORITY_FILTERS:
        abort(
            400,
            description=_(
                "Unknown priority filter “%(value)s”. Choose one of: %(known)s.",
                value=priority[:32],
                known=", ".join(PRIORITY_FILTERS),
            ),
        )
    return DayFilters(
        modality=modality, station=station, status=status, text=text, priority=priority
    )


def parse_refresh(value: str | None) -> bool:
    """Whether the list updates itself: on unless ``refresh=off``."""
    if value is None or value in ("", "on"):
        return True
    if value == "off":
        return False
    abort(400, description=_("The refresh parameter must be “on” or “off”."))


@bp.app_template_filter("status_label")
def status_label(status: SpsStatus | str) -> str:
    """A step status as the page shows it (translated); unknown values unchanged."""
    return step_status_text(str(status).upper() if isinstance(status, str) else status)


@bp.app_template_filter("priority_label")
def priority_label(priority: str) -> str:
    """The marker text of an urgent priority (STAT, Urgent); "" for any other."""
    label = PRIORITY_LABELS.get(priority.strip().upper())
    return str(label) if label is not None else ""


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


@dataclass(frozen=True)
class DayView:
    """Everything the day list's URL says: days, filters, order, page, live updates."""

    today: dt.date
    first: dt.date
    last: dt.date | None = None  # None: one day
    filters: DayFilters = DayFilters()
    sort: DaySort = DaySort.TIME
    descending: bool = False
    page: int = 1
    size: int = PAGE_SIZE_DEFAULT
    refresh: bool = True

    @property
    def days(self) -> int:
        """How many days the view spans."""
        return ((self.last or self.first) - self.first).days + 1

    def query(self) -> DayQuery:
        """The core query of this view (filters and order, without the page)."""
        f = self.filters
        return DayQuery(
            first=self.first,
            last=self.last,
            modality=f.modality,
            station=f.station,
            statuses=f.statuses(),
            text=f.text,
            priorities=f.priorities(),
            sort=self.sort,
            descending=self.descending,
        )

    def args(self) -> dict[str, str]:
        """The canonical query string of this view: defaults are left out."""
        args = dict(self.filters.args())
        # Today's address carries no date, so a console left on it overnight moves
        # on to the next day by itself (a range always names its days).
        if self.first != self.today or self.last is not None:
            args["date"] = self.first.isoformat()
        if self.last is not None:
            args["to"] = self.last.isoformat()
        if self.sort is not DaySort.TIME:
            args["sort"] = self.sort.value
        if self.descending:
            args["dir"] = "desc"
        if self.size != PAGE_SIZE_DEFAULT:
            args["size"] = str(self.size)
        if self.page != 1:
            args["page"] = str(self.page)
        if not self.refresh:
            args["refresh"] = "off"
        return args

    def but(self, **changes: Any) -> DayView:
        """This view with some parts changed; a change of filter or order goes to page 1."""
        if "page" not in changes:
            changes["page"] = 1
        return replace(self, **changes)

    def url(self, endpoint: str = "worklist.day", **changes: Any) -> str:
        """The address of this view (changed as :meth:`but` does) at ``endpoint``."""
        view = self.but(**changes) if changes else self
        args: dict[str, Any] = view.args()
        return url_for(endpoint, **args)

    def page_url(self, page: int) -> str:
        """The address of another page of this view."""
        args: dict[str, Any] = replace(self, page=page).args()
        return url_for("worklist.day", **args)

    def sort_url(self, sort: DaySort) -> str:
        """The link of a column header: sort by it, or reverse the order if it is the sort."""
        if sort is self.sort:
            return self.url(descending=not self.descending)
        return self.url(sort=sort, descending=False)

    def shifted(self, days: int) -> DayView | None:
        """The same span moved by ``days`` (the previous/next links); None past the calendar."""
        try:
            first = self.first + dt.timedelta(days=days)
            last = self.last + dt.timedelta(days=days) if self.last else None
        except OverflowError:
            return None
        if not day_in_range(first) or (last is not None and not day_in_range(last)):
            return None
        return self.but(first=first, last=last)


def parse_view(args: Mapping[str, str], today: dt.date) -> DayView:
    """Read and check the whole query string of the day list (see :func:`day`).

    Raises
    ------
    werkzeug.exceptions.BadRequest
        For any malformed parameter, with a message naming it.
    """
    first = parse_day(args.get("date"), today)
    last_text = args.get("to")
    last = parse_day(last_text, today) if last_text else None
    if last is not None and last < first:
        abort(400, description=_("The last day of the range must not lie before the first."))
    if last is not None and (last - first).days >= RANGE_MAX_DAYS:
        abort(
            400,
            description=_("A range spans at most %(num)s days.", num=RANGE_MAX_DAYS),
        )
    if last == first:
        last = None
    sort_text = args.get("sort", "") or DaySort.TIME.value
    try:
        sort = DaySort(sort_text)
    except ValueError:
        abort(
            400,
            description=_(
                "Unknown sort “%(value)s”. Choose one of: %(known)s.",
                value=sort_text[:32],
                known=", ".join(s.value for s in DaySort),
            ),
        )
    direction = args.get("dir", "") or "asc"
    if direction not in ("asc", "desc"):
        abort(400, description=_("The sort direction must be “asc” or “desc”."))
    return DayView(
        today=today,
        first=first,
        last=last,
        filters=parse_filters(args),
        sort=sort,
        descending=direction == "desc",
        page=page_number(args.get("page")),
        size=page_size(args.get("size")),
        refresh=parse_refresh(args.get("refresh")),
    )


@dataclass(frozen=True)
class RowTexts:
    """What every row of a page shares, worked out once per page (see :data:`ROW_TEXTS`)."""

    texts: Mapping[str, str]
    statuses: Mapping[SpsStatus, str]
    sexes: Mapping[str, str]
    priorities: Mapping[str, str]
    item_base: str
    test_base: str

    @classmethod
    def now(cls) -> RowTexts:
        """The texts in the request's language, and the base addresses of the row links."""
        # "/items/1" less its key: url_for once, not once per row.
        item_base = url_for("items.detail", key=1)[:-1]
        return cls(
            texts={name: str(text) for name, text in ROW_TEXTS.items()},
            statuses={status: str(label) for status, label in STATUS_LABELS.items()},
            sexes={sex: str(label) for sex, label in SEX_LABELS.items()},
            priorities={value: str(label) for value, label in PRIORITY_LABELS.items()},
            item_base=item_base,
            test_base=url_for("scanners.test"),
        )

    def item_url(self, item: WorklistItem) -> str:
        """The item page of a row."""
        return f"{self.item_base}{item.step_key}"

    def scanner_links(self, item: WorklistItem) -> tuple[str, str]:
        """The row's "why not on the station's list?" and "test as this scanner" addresses."""
        ae = item.scheduled_station_ae_title
        if not ae:
            return f"{self.test_base}?{urlencode({'step': item.step_key})}", self.test_base
        why = f"{self.test_base}?{urlencode({'step': item.step_key, 'ae': ae})}"
        return why, f"{self.test_base}?{urlencode({'ae': ae})}"


def load_page(view: DayView) -> tuple[DayPage, list[ModalityCount], int]:
    """The page of rows, the per-modality counts and the range's unfiltered total.

    The counts per modality apply every filter but the modality, so they give the
    page's total too; the unfiltered total costs a query only when a filter other
    than the modality is set.
    """
    session = db_session()
    f = view.filters
    counts = modality_counts(
        session,
        view.first,
        last=view.last,
        station=f.station,
        statuses=f.statuses(),
        text=f.text,
        priorities=f.priorities(),
    )
    if f.modality:
        total = sum(c.total for c in counts if c.modality == f.modality)
    else:
        total = sum(c.total for c in counts)
    page = day_page(
        session,
        view.query(),
        offset=(view.page - 1) * view.size,
        limit=view.size,
        total=total,
    )
    if f.station or f.status or f.text or f.priority:
        range_total = count_steps(session, DayQuery(first=view.first, last=view.last))
    else:
        range_total = sum(c.total for c in counts)
    return page, counts, range_total


@bp.get("/")
@role_required(Role.VIEWER)
def day() -> ResponseReturnValue:
    """The worklist of a day (``?date=YYYY-MM-DD``, default today) or range, filtered.

    Query parameters: ``date`` (the first day) and ``to`` (the last, inclusive),
    ``modality``, ``station``, ``status`` (``all``, ``open`` or a step status),
    ``q`` (patient name, patient ID or accession number), ``priority`` (``urgent``
    or ``stat``), ``sort`` (a :class:`~mwl.worklist.daylist.DaySort` value) and
    ``dir`` (``asc``, ``desc``), ``page`` and ``size``, and ``refresh=off``. A GET
    form sets them, so each room's console can bookmark its own view, e.g.
    ``/?modality=CT&station=CT01``. Filters ignore case.
    """
    today = local_today()
    view = parse_view(request.args, today)
    # The filter form sends empty fields and today's date: the canonical address is
    # the one to bookmark on a console.
    if request.args.to_dict() != view.args():
        return redirect(view.url(page=view.page))
    page, counts, range_total = load_page(view)
    pages = max(1, -(-page.total // view.size))
    if view.page > pages:
        return redirect(view.page_url(pages))
    version = day_version(db_session(), view.query())
    return render_template(
        "worklist.html",
        alerts=firing_for_page(),
        view=view,
        items=page.items,
        device_notes=device_findings_for(page.items),
        total=page.total,
        range_total=range_total,
        pages=pages,
        counts=counts,
        open_count=open_count,
        filters=view.filters,
        status_choices=status_choices(),
        priority_choices=priority_choices(),
        sorts=SORT_LABELS,
        day=view.first,
        today=today,
        previous_view=view.shifted(-view.days),
        next_view=view.shifted(view.days),
        version=version,
        poll_seconds=POLL_SECONDS,
        can_edit=has_role(Role.EDITOR),
        bulk_statuses=MANUAL_STATUSES,
        rows=RowTexts.now(),
        updated_at=dt.datetime.now(),
        text_max_length=TEXT_MAX_LENGTH,
        code_max_length=CODE_MAX_LENGTH,
    )


@bp.get("/worklist/changes")
@role_required(Role.VIEWER)
def changes() -> ResponseReturnValue:
    """Whether the list a page shows changed: ``{"version": ..., "changed": bool}``.

    Takes the page's own query string plus ``since`` (the version the page has).
    One aggregate query over the range's start index, so polling stays cheap.
    """
    args = {k: v for k, v in request.args.items() if k != "since"}
    view = parse_view(args, local_today())
    version = day_version(db_session(), view.query())
    since = request.args.get("since", "")
    return jsonify(version=version, changed=bool(since) and since != version)
