"""The day list page: every scheduled step of one day, with its status."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, abort, render_template, request
from flask_login import login_required

from mwl.daylist import items_for_day
from web.store import db_session

bp = Blueprint("worklist", __name__)

# Refresh interval of today's list, in seconds: a console shows new orders without
# anyone touching it (a meta refresh, so no JavaScript).
REFRESH_SECONDS = 60

BAD_DATE = "The date must be a calendar date written YYYY-MM-DD, e.g. 2026-11-21."


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
        return dt.datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        abort(400, description=BAD_DATE)


@bp.get("/")
@login_required
def day() -> str:
    """The worklist of one day (``?date=YYYY-MM-DD``, default today), all statuses."""
    today = dt.date.today()
    shown = parse_day(request.args.get("date"), today)
    items = items_for_day(db_session(), shown)
    previous_day = shown - dt.timedelta(days=1) if shown > dt.date.min else None
    next_day = shown + dt.timedelta(days=1) if shown < dt.date.max else None
    return render_template(
        "worklist.html",
        items=items,
        day=shown,
        today=today,
        previous_day=previous_day,
        next_day=next_day,
        refresh_seconds=REFRESH_SECONDS if shown == today else None,
    )
