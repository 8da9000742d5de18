"""The HL7 message log: list of received messages and one message with its ACK."""

from __future__ import annotations

from flask import Blueprint, abort, render_template, request
from flask_login import login_required

from mwl.activity import message_detail, recent_messages
from web.store import db_session

bp = Blueprint("messages", __name__)

PAGE_SIZE = 100


@bp.get("/messages")
@login_required
def index() -> str:
    """The newest messages; ``?before=KEY`` shows older ones."""
    before = request.args.get("before", type=int)
    # One more than a page tells whether an "older" link is needed.
    found = recent_messages(db_session(), limit=PAGE_SIZE + 1, before_key=before)
    page = found[:PAGE_SIZE]
    older = page[-1].key if len(found) > PAGE_SIZE else None
    return render_template("messages.html", messages=page, older=older, before=before)


@bp.get("/messages/<int:key>")
@login_required
def detail(key: int) -> str:
    """One message: header fields, raw text and the ACK sent."""
    message = message_detail(db_session(), key)
    if message is None:
        abort(404, description="There is no message with this number.")
    return render_template("message.html", message=message)
