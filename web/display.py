"""Presentation of DICOM and HL7 values for people: names, dates, times, message text, items."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from flask import Flask
from flask_babel import format_date, format_datetime, format_time
from flask_babel import lazy_gettext as _l

from mwl.domain import Code, SpsStatus, WorklistItem
from mwl.worklist.fields import BY_NAME, Kind, Section, StoredField, in_section

# Step statuses as the page names them (the DICOM defined terms stay in the data).
STATUS_LABELS: dict[SpsStatus, Any] = {
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


def person_name(value: str) -> str:
    """A DICOM person name as people write it: ``Müller^Hans^^Dr.`` -> ``Müller, Dr. Hans``.

    The alphabetic group is used; when it is empty, the first non-empty group
    (ideographic or phonetic) is. Components are family, given, middle, prefix and
    suffix (PS3.5 6.2.1.1).
    """
    groups = [g for g in value.split("=") if g.strip("^ ")]
    if not groups:
        return ""
    parts = [p.strip() for p in (groups[0].split("^") + [""] * 5)[:5]]
    family, given, middle, prefix, suffix = parts
    rest = " ".join(p for p in (prefix, given, middle, suffix) if p)
    if family and rest:
        return f"{family}, {rest}"
    return family or rest


def dicom_date(value: str) -> str:
    """``YYYYMMDD`` as ``YYYY-MM-DD``; anything else unchanged (it is shown, not judged)."""
    try:
        return dt.datetime.strptime(value, "%Y%m%d").date().isoformat()
    except ValueError:
        return value


# How a moment is shown; the words are CLDR's widths, in the page's locale:
# date       03.12.2026 (de-CH, de-DE) · Dec 3, 2026 (en) · 3 Dec 2026 (en-GB)
# day        Donnerstag, 3. Dezember 2026 · Thursday, December 3, 2026
# datetime   03.12.2026, 14:05:09 · Dec 3, 2026, 2:05:09 PM
# minute     03.12.2026, 14:05 · Dec 3, 2026, 2:05 PM
# time       14:05 · 2:05 PM
# seconds    14:05:09 · 2:05:09 PM
When = Literal["date", "day", "datetime", "minute", "time", "seconds"]


def when_text(value: dt.date | dt.datetime | None, form: When = "datetime") -> str:
    """A date or a (naive, local) date and time in the page's locale, through Babel.

    The one place the page formats dates and times for people: inputs of type
    date, ``<time datetime>``, the API and CSV keep ISO 8601. Needs a request (the
    locale is the reader's, see :mod:`web.i18n`).
    """
    if value is None:
        return ""
    if form == "date":
        return str(format_date(value, "medium"))
    if form == "day":
        return str(format_date(value, "full"))
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    if form == "time":
        return str(format_time(value, "short"))
    if form == "seconds":
        return str(format_time(value, "medium"))
    if form == "minute":
        return f"{format_date(value, 'medium')}, {format_time(value, 'short')}"
    return str(format_datetime(value, "medium"))


def local_time(value: dt.datetime | None, form: When = "datetime") -> str:
    """A naive UTC timestamp from the logs, in the server's local time and the page's locale."""
    if value is None:
        return ""
    local = value.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)
    return when_text(local, form)


def birth_date(value: str) -> str:
    """A DICOM date (``YYYYMMDD``) in the page's locale; anything else unchanged."""
    try:
        day = dt.datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        return value
    return when_text(day, "date")


def step_status_text(value: SpsStatus | str) -> str:
    """A step status as the page names it (translated); an unknown value as it is."""
    try:
        return str(STATUS_LABELS[SpsStatus(value)])
    except ValueError:
        return str(value)


def start_text(value: dt.datetime) -> str:
    """A scheduled start (local time of the department) as the page shows it."""
    return when_text(value, "minute")


def code_text(code: Code | None) -> str:
    """A coded entry as ``meaning (value)``, or just the value when it has no meaning."""
    if code is None:
        return ""
    if code.meaning and code.value:
        return f"{code.meaning} ({code.value})"
    return code.meaning or code.value


def hl7_text(raw: bytes | None) -> str:
    """An HL7 message or ACK as readable text, one segment per line.

    UTF-8 when it decodes, else Latin-1 (which decodes anything): a display aid,
    not a parse, so the message's own charset field is not consulted.
    """
    if not raw:
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    # Segments end in CR (HL7 v2.5.1 2.5.4); strip the MLLP frame bytes if stored.
    text = text.strip("\x0b\x1c\r\n")
    return "\n".join(text.replace("\r\n", "\r").replace("\n", "\r").split("\r"))


# The stored fields of an item (mwl.worklist.fields) by the part of the item page
# that shows them ("patient", "order", "step", "details"), in order.
ITEM_SECTIONS: dict[str, tuple[StoredField, ...]] = {s.value: in_section(s) for s in Section}


def field_text(item: WorklistItem, field: StoredField) -> str:
    """A stored field of ``item`` as the item page shows it, as text.

    Names as people write them, dates and the start in the page's locale
    (:func:`when_text`), codes as ``meaning (value)`` (several separated by
    commas), the status as its defined term; text as it is.
    """
    value = getattr(item, field.name)
    kind = field.kind
    if kind is Kind.PERSON_NAME:
        return person_name(value)
    if kind is Kind.DATE:
        return birth_date(value)
    if kind is Kind.CODE:
        return code_text(value)
    if kind is Kind.CODES:
        return ", ".join(code_text(code) for code in value)
    if kind is Kind.START:
        return start_text(value)
    if kind is Kind.STATUS:
        return step_status_text(value)
    if field.name == "patient_sex":
        from web.worklist import SEX_LABELS

        return str(SEX_LABELS.get(value, value))
    text: str = value
    return text


def change_text(name: str, value: Any) -> str:
    """A value of the audit trail (as stored: ``Doe^Jane``, ``19800214``) as the page shows it.

    The trail keeps the raw values; the item page shows the same field the same way
    (:func:`field_text`), so a change reads like the page around it. Fields the item
    declaration does not know, and values that do not parse, are shown as stored.
    """
    if value is None or value == "":
        return ""
    field = BY_NAME.get(name)
    kind = field.kind if field is not None else Kind.TEXT
    text = str(value)
    if kind is Kind.PERSON_NAME:
        return person_name(text)
    if kind is Kind.DATE:
        return dicom_date(text)
    if kind is Kind.START:
        try:
            return start_text(dt.datetime.fromisoformat(text))
        except ValueError:
            return text
    if kind is Kind.STATUS:
        return step_status_text(text)
    return text


def _shown_for(field: StoredField, item: WorklistItem) -> bool:
    """Jinja test ``fields|select('shown_for', item)``: whether ``item`` has ``field``'s value."""
    return bool(field_text(item, field))


# The statuses of a performed step (PS3.3 C.4.14) and the HL7 outcomes that are
# words; AA, AE and AR are HL7's acknowledgment codes (Table 0008), shown as such.
_MPPS_STATUS = {
    "IN PROGRESS": _l("in progress"),
    "COMPLETED": _l("completed"),
    "DISCONTINUED": _l("discontinued"),
}
_OUTCOMES = {"RECEIVED": _l("received")}


def mpps_status(value: str) -> str:
    """A performed step's status in the reader's language (the defined term if unknown)."""
    return str(_MPPS_STATUS.get(value, value))


def outcome_label(value: str) -> str:
    """An HL7 message's outcome: the ACK code, or "received" (not processed yet)."""
    return str(_OUTCOMES.get(value, value))


def register_filters(app: Flask) -> None:
    """Make the functions above available to the templates (filters, a global, a test)."""
    app.add_template_filter(person_name, "person_name")
    # The templates' "dicom_date" is for people: the locale's form, not ISO (the API's).
    app.add_template_filter(birth_date, "dicom_date")
    app.add_template_filter(local_time, "local_time")
    app.add_template_filter(when_text, "when")
    app.add_template_filter(mpps_status, "mpps_status")
    app.add_template_filter(outcome_label, "outcome_label")
    app.add_template_filter(code_text, "code_text")
    app.add_template_filter(hl7_text, "hl7_text")
    app.add_template_filter(step_status_text, "step_status")
    app.add_template_global(field_text, "field_text")
    app.add_template_global(change_text, "change_text")
    app.add_template_test(_shown_for, "shown_for")
