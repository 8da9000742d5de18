"""The modalities (calling AE titles) that query the worklist, and how they fare today."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, render_template
from flask_login import login_required

from mwl.activity import scanner_activity
from web.store import db_session

bp = Blueprint("scanners", __name__)


def local_midnight_utc(now: dt.datetime | None = None) -> dt.datetime:
    """Start of today in the server's local time, as the naive UTC the logs store."""
    local = (now or dt.datetime.now(dt.UTC)).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.astimezone(dt.UTC).replace(tzinfo=None)


@bp.get("/scanners")
@login_required
def index() -> str:
    """One line per calling AE title: last seen, queries and matches today."""
    scanners = scanner_activity(db_session(), local_midnight_utc())
    return render_template("scanners.html", scanners=scanners)
