"""Log lines: the correlation context the adapters set, and the JSON line format.

The adapters say what a thread is working on with :func:`log_context` (one DICOM
association, one HL7 message, one web request); every record logged meanwhile
carries those fields. ``log_format = "json"`` writes each record as one JSON object
per line, for a log shipper (Docker's json-file or journald driver, Fluent Bit)
that indexes fields instead of parsing text.

Context values identify systems and messages (association id, AE titles, peer
address, MSH-10, request id), never patients: they are written at every level.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import secrets
import sys
import threading
from collections.abc import Iterator, Mapping
from types import MappingProxyType, TracebackType

# One immutable mapping per context: a nested log_context extends it and its exit
# restores the outer one, whatever the thread did in between.
_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "mwl_log_fields", default=MappingProxyType({})
)

# The field that names what a line belongs to, by preference: one association, one
# HL7 message, one web request.
CORRELATION_KEYS = ("association", "hl7_control_id", "request_id")

# Logger name prefix -> component, most specific first; libraries by their role.
_COMPONENTS = (
    ("mwl.hl7", "hl7"),
    ("mwl.dicom", "dicom"),
    ("pynetdicom", "dicom"),
    ("web", "web"),
    ("cheroot", "web"),
    ("werkzeug", "web"),
    ("mwl.store", "store"),
    ("sqlalchemy", "store"),
    ("alembic", "store"),
    ("py.warnings", "python"),
    ("mwl.", ""),
)

# LogRecord attributes of every record: whatever else a record has came from
# ``extra=`` and is written as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def new_id() -> str:
    """A short random id for an association or a request (unique enough in one log)."""
    return secrets.token_hex(6)


def current_fields() -> Mapping[str, str]:
    """The correlation fields of the running context."""
    return _fields.get()


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add ``fields`` to every record logged in this context until the block ends.

    Empty values are left out, so a caller can pass what it may not know yet.
    """
    token = _fields.set(_extended(fields))
    try:
        yield
    finally:
        _fields.reset(token)


def bind(**fields: str) -> contextvars.Token[Mapping[str, str]]:
    """Add ``fields`` for the rest of this context (or until :func:`unbind`).

    For code that learns a value in the middle of a :func:`log_context` block (an
    association's calling AE title), or for frameworks with separate begin and end
    hooks (a web request).
    """
    return _fields.set(_extended(fields))


def unbind(token: contextvars.Token[Mapping[str, str]]) -> None:
    """Undo the :func:`bind` that returned ``token``."""
    _fields.reset(token)


def _extended(fields: Mapping[str, str]) -> Mapping[str, str]:
    merged = dict(_fields.get())
    merged.update((key, value) for key, value in fields.items() if value)
    return MappingProxyType(merged)


class ContextFilter(logging.Filter):
    """Copy the context's fields onto each record, in the thread that logs it.

    On the handler, so records of every logger get them; copying (rather than the
    formatter reading the context) keeps the fields right for a handler that
    formats elsewhere, such as a queue listener.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "mwl_context"):
            record.mwl_context = dict(_fields.get())
        return True


def component_of(logger_name: str) -> str:
    """The broker part a logger belongs to: hl7, dicom, web, store, ... (by name)."""
    for prefix, component in _COMPONENTS:
        if logger_name == prefix or logger_name.startswith(prefix.rstrip(".") + "."):
            if component:
                return component
            # mwl.<part>...: the part (cli, orders, operations, worklist, admin, ...).
            return logger_name[len(prefix) :].split(".")[0]
    return logger_name.split(".")[0]


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Fields: ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
    ``component``, ``message``; ``correlation_id`` and the context's fields when a
    context is set; ``exception`` (the formatted traceback) when there is one;
    and whatever the call passed in ``extra=``.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "component": component_of(record.name),
            "message": record.getMessage(),
        }
        context: Mapping[str, str] = getattr(record, "mwl_context", None) or _fields.get()
        correlation = next((context[key] for key in CORRELATION_KEYS if key in context), None)
        if correlation is not None:
            line["correlation_id"] = correlation
        line.update(context)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key != "mwl_context" and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ASCII escapes: a line survives any stream encoding and every parser reads it.
        return json.dumps(line, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for the ``log_format`` setting (``text`` or ``json``)."""
    if log_format.lower() == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def _rfc3339(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def route_stray_output() -> None:
    """Send warnings and uncaught exceptions through logging, not raw to stderr.

    Otherwise a traceback of a thread that died, or a library's warning, would be
    lines of their own between the JSON lines (and lines without a level in text).
    """
    logging.captureWarnings(True)
    uncaught = logging.getLogger("mwl.uncaught")

    def log_exception(
        kind: type[BaseException], value: BaseException, trace: TracebackType | None
    ) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, trace)
            return
        uncaught.critical("uncaught exception", exc_info=(kind, value, trace))

    def log_thread_exception(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        uncaught.error(
            "uncaught exception in thread %s",
            name,
            exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
        )

    sys.excepthook = log_exception
    threading.excepthook = log_thread_exception
