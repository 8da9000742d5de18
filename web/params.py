"""Bounds on what a request may name: database keys, paging cursors, calendar days.

A value outside them is an answer the client can act on (404 for a key that cannot
exist, 400 for a malformed cursor or day), never an overflow deep in the database
driver or the calendar arithmetic.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import abort
from flask_babel import gettext as _

from web.openapi import KEY_MAX

# The days a worklist page can show: the API's bounds (web.openapi's DATE pattern).
# Far enough from the ends of the calendar for the day before and after (the page's
# links) and for the conversion to UTC.
FIRST_DAY = dt.date(1900, 1, 1)
LAST_DAY = dt.date(2999, 12, 31)


def reject_keys_out_of_range(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """404 for a URL whose ``<int:...>`` part is no database key (1 to :data:`KEY_MAX`).

    Registered with ``app.url_value_preprocessor``, so it covers every route, the
    API's included. Keys are 32-bit integers on PostgreSQL: a larger number names
    nothing, and the drivers refuse one beyond 64 bits with an exception. (A bounded
    URL converter would do the same, but werkzeug then answers 405 instead of 404
    where two rules share a path with different methods.)
    """
    for value in (values or {}).values():
        if isinstance(value, int) and not 1 <= value <= KEY_MAX:
            abort(404)


def key_of(text: str) -> int | None:
    """``text`` as a database key (1 to :data:`KEY_MAX`), or None when it is not one."""
    # The length check comes first: int() of thousands of digits is slow, and refused.
    if text.isascii() and text.isdigit() and len(text) <= len(str(KEY_MAX)):
        number = int(text)
        if 1 <= number <= KEY_MAX:
            return number
    return None


def cursor(value: str | None) -> int | None:
    """A ``before=KEY`` paging cursor: None when absent, else a key in range.

    Raises
    ------
    werkzeug.exceptions.BadRequest
        When the value is not a whole number from 1 to :data:`KEY_MAX`.
    """
    if value is None or value == "":
        return None
    key = key_of(value)
    if key is not None:
        return key
    abort(400, description=_("The page link is not valid; start again from the newest."))


def day_in_range(day: dt.date) -> bool:
    """Whether ``day`` lies between :data:`FIRST_DAY` and :data:`LAST_DAY`."""
    return FIRST_DAY <= day <= LAST_DAY


def day_range_error() -> str:
    """The message for a day outside the range, in the reader's language."""
    return _(
        "The date must lie between %(first)s and %(last)s.",
        first=FIRST_DAY.isoformat(),
        last=LAST_DAY.isoformat(),
    )


# DICOMweb (web.dicomweb): what one Search may ask. A modality's worklist is some
# hundred steps; a page larger than this is refused work, not a service.
#: Query parameters per request (keys, includefield, paging), and the length of each.
DICOMWEB_MAX_PARAMETERS = 64
DICOMWEB_MAX_VALUE_LENGTH = 1024
#: Matches per page: a larger ``limit``, or none, gets this many and a Warning.
DICOMWEB_MAX_LIMIT = 1000
#: The largest ``offset`` (beyond every match limit the settings allow).
DICOMWEB_MAX_OFFSET = 1_000_000
#: MPPS attribute lists: Performed Series Sequences with their image references.
DICOMWEB_MAX_PAYLOAD_BYTES = 1024 * 1024


# Rows on one page of a list: the default keeps a 2,000-step day's first page small
# (about 60 KB of HTML); the maximum bounds what one request may ask the database for.
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 500
# Pages a list may be asked for: far beyond any real day (20,000 steps are 200 pages
# of 100), near enough that offset * size stays a small integer for every driver.
PAGE_MAX = 100_000


def page_size(value: str | None) -> int:
    """A ``size=N`` page size: :data:`PAGE_SIZE_DEFAULT` when absent, else 1 to the maximum.

    Raises
    ------
    werkzeug.exceptions.BadRequest
        When the value is not a whole number from 1 to :data:`PAGE_SIZE_MAX`.
    """
    if value is None or value == "":
        return PAGE_SIZE_DEFAULT
    if value.isascii() and value.isdigit() and len(value) <= 4 and 1 <= int(value) <= PAGE_SIZE_MAX:
        return int(value)
    abort(
        400,
        description=_("The page size must be a whole number from 1 to %(max)s.", max=PAGE_SIZE_MAX),
    )


def page_number(value: str | None) -> int:
    """A ``page=N`` page number (from 1): 1 when absent.

    Raises
    ------
    werkzeug.exceptions.BadRequest
        When the value is not a whole number from 1 to :data:`PAGE_MAX`.
    """
    if value is None or value == "":
        return 1
    if value.isascii() and value.isdigit() and len(value) <= 6 and 1 <= int(value) <= PAGE_MAX:
        return int(value)
    abort(
        400,
        description=_("The page number must be a whole number from 1 to %(max)s.", max=PAGE_MAX),
    )
