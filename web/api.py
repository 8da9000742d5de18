"""The JSON API under /api/v1, with bearer-token authentication and an OpenAPI document.

Every request but the OpenAPI document needs ``Authorization: Bearer <token>``
(:mod:`mwl.admin.tokens`); the session cookie of the pages is never looked at, which is
also why the blueprint is exempt from CSRF protection. The token acts with its
user's role: viewers read, editors create, change, cancel and restore items. The
API changes the worklist through the same core services as the pages
(:mod:`mwl.orders.entry`, :mod:`mwl.orders.edits`), so checks and audit events are the
same. Messages are English: they are read by the people who write scripts, and a
stable text is easier to search for than a translated one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from flask import Blueprint, Response, g, jsonify, request, url_for
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from mwl.admin.tokens import find_token, record_use, use_is_due
from mwl.admin.users import Role
from mwl.domain import Code, SpsStatus, WorklistItem
from mwl.operations.activity import (
    MessageFilter,
    MessageSummary,
    message_changes,
    message_detail,
    recent_messages,
)
from mwl.operations.activity import scanner_activity as scanner_activity_of
from mwl.orders.edits import (
    STATUS,
    EditError,
    StepChanges,
    UnknownStepError,
    cancel_step,
    edit_step,
    get_item,
    restore_step,
)
from mwl.orders.entry import NewOrder, create_order
from mwl.worklist.daylist import items_for_day
from mwl.worklist.fields import BY_NAME, FIELDS, Kind
from web import audit_events, openapi
from web.display import dicom_date
from web.openapi import Spec
from web.scanners import local_midnight_utc
from web.store import db_session, state, writer

logger = logging.getLogger(__name__)

PREFIX = "/api/v1"
bp = Blueprint("api", __name__, url_prefix=PREFIX)

_REALM = 'Bearer realm="mwl"'
NOT_ACCEPTED = "The request was not accepted; nothing was stored."


@dataclass(frozen=True)
class ApiUser:
    """Who the request's token acts as: a detached copy, never an ORM row."""

    username: str
    role: Role | None  # None: a role this version does not know, which may do nothing


class ApiError(Exception):
    """Ends a request with a JSON error ``{"error": message[, "errors": {...}]}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


#: MWL-RS and MPPS-RS (web.dicomweb): the same tokens, and errors as JSON too.
DICOMWEB_PREFIX = "/dicomweb"


def is_api_request() -> bool:
    """Whether the current request is for the API or DICOMweb (errors are JSON, never HTML)."""
    path = request.path
    return any(
        path == prefix or path.startswith(prefix + "/") for prefix in (PREFIX, DICOMWEB_PREFIX)
    )


def error_response(
    status: int,
    message: str,
    *,
    errors: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON error response: ``{"error": message}``, with ``errors`` per field if given."""
    body: dict[str, Any] = {"error": message}
    if errors is not None:
        body["errors"] = dict(errors)
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def http_error(error: HTTPException) -> Response:
    """The JSON form of an HTTP error (404, 405, 413, ...) under /api/v1."""
    code = error.code or 500
    response = error_response(code, error.description or error.name)
    # Keeps Allow (405) and the like; the body is ours.
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def server_error() -> Response:
    """The JSON answer to an unexpected error (logged by the caller, never shown)."""
    return error_response(500, "Internal server error; it has been logged.")


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    return error_response(error.status, error.message, errors=error.errors, headers=error.headers)


@bp.before_request
def _authenticate() -> None:
    if request.endpoint == "api.openapi_document":
        return
    authenticate()


def authenticate() -> None:
    """Who the request's bearer token acts as, in ``g.api_user``; 401 without a valid one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "Authentication required: send the header Authorization: Bearer <token>.",
            headers={"WWW-Authenticate": _REALM},
        )
    found = find_token(db_session(), token)
    if found is None:
        logger.warning("API request with an unknown token from %s", request.remote_addr)
        audit_events.token_refused()
        raise ApiError(
            401,
            "The token is not valid (unknown or revoked).",
            headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
        )
    row, user = found
    try:
        role: Role | None = Role(user.role)
    except ValueError:
        role = None
    g.api_user = ApiUser(user.username, role)
    # Once a minute at most, in a short writer transaction of its own: most
    # requests only read.
    if use_is_due(row.last_used_at):
        try:
            with writer().begin() as session:
                record_use(session, row.id)
                audit_events.token_login(session, user.username)
        except OperationalError:
            # Bookkeeping only: a busy database must not refuse the request itself.
            logger.warning("could not record the use of API token %s", row.id, exc_info=True)


def _require(role: Role) -> ApiUser:
    return require(role)


def require(role: Role) -> ApiUser:
    """The token's user, or 403 when the user lacks ``role`` (after :func:`authenticate`)."""
    user: ApiUser = g.api_user
    order = list(Role)  # each role includes the ones before it
    if user.role is None or order.index(user.role) < order.index(role):
        raise ApiError(403, f"This needs the {role.value} role; the token's user lacks it.")
    return user


# --- representation -------------------------------------------------------------------


def _code(code: Code) -> dict[str, str]:
    return {"value": code.value, "scheme": code.scheme, "meaning": code.meaning}


def item_json(item: WorklistItem) -> dict[str, Any]:
    """A worklist item as the API shows it: DICOM keywords in snake_case, ISO dates.

    One member per stored field (:mod:`mwl.worklist.fields`), under its API name, plus
    ``key`` (the step's database key) and ``status`` (the step status again).
    """
    body: dict[str, Any] = {"key": item.step_key}
    for field in FIELDS:
        body[field.api_name] = _json_value(field.kind, getattr(item, field.name))
    body["status"] = body[BY_NAME["scheduled_procedure_step_status"].api_name]
    return body


def _json_value(kind: Kind, value: Any) -> Any:
    if kind is Kind.CODE:
        return None if value is None else _code(value)
    if kind is Kind.CODES:
        return [_code(code) for code in value]
    if kind is Kind.START:
        return value.isoformat(timespec="seconds")
    if kind is Kind.DATE:
        return dicom_date(value)
    if kind is Kind.STATUS:
        return SpsStatus(value).value
    return value


def _utc(value: dt.datetime | None) -> str | None:
    # The logs store naive UTC; the API says so with the offset.
    return None if value is None else value.replace(tzinfo=dt.UTC).isoformat()


def _message_json(message: MessageSummary) -> dict[str, Any]:
    return {
        "key": message.key,
        "received_at": _utc(message.received_at),
        "message_type": message.message_type,
        "message_control_id": message.message_control_id,
        "sending_application": message.sending_application,
        "sending_facility": message.sending_facility,
        "peer_address": message.peer_address,
        "outcome": message.outcome,
        "error": message.error,
    }


def _hl7_text(raw: bytes | None) -> str | None:
    """The message as text: UTF-8 when it decodes, else Latin-1 (which decodes anything)."""
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.strip("\x0b\x1c\n")


# --- input ----------------------------------------------------------------------------


def _not_accepted(errors: Mapping[str, str], status: int = 400) -> NoReturn:
    raise ApiError(status, NOT_ACCEPTED, errors=errors)


def _query(specs: Mapping[str, Spec]) -> dict[str, str]:
    """The query parameters named in ``specs`` that are present, checked."""
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name, spec in specs.items():
        raw = request.args.get(name)
        if raw is None:
            continue
        problem = spec.query_problem(raw)
        if problem:
            errors[name] = problem
        values[name] = raw
    if errors:
        _not_accepted(errors)
    return values


def _json_object(*, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (``{}`` for an absent optional body)."""
    data = request.get_data(cache=True)  # raises 413 beyond MAX_CONTENT_LENGTH
    if optional and not data:
        return {}
    if not request.is_json:
        raise ApiError(415, "Send the body as JSON, with Content-Type: application/json.")
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        _not_accepted({"body": "Not valid JSON."})
    if not isinstance(parsed, dict):
        _not_accepted({"body": "Must be a JSON object."})
    return parsed


def _checked(
    data: Mapping[str, Any], specs: Mapping[str, Spec], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``data`` checked against ``specs``; dates and times converted for the core."""
    errors: dict[str, str] = {}
    for name in data:
        if name not in specs:
            errors[name] = "Unknown field."
    for name in required:
        if name not in data:
            errors[name] = "This is required."
    values: dict[str, Any] = {}
    for name, value in data.items():
        spec = specs.get(name)
        if spec is None or name in errors:
            continue
        problem = spec.problem(value)
        if problem is None and name == "start":
            value, problem = _local_datetime(value)
        elif problem is None and name == "patient_birth_date":
            value, problem = _dicom_date(value)
        if problem:
            errors[name] = problem
        else:
            values[name] = value
    if errors:
        _not_accepted(errors)
    return values


def _local_datetime(text: str) -> tuple[dt.datetime | None, str | None]:
    """``text`` (checked against the pattern) as a naive local date-time."""
    try:
        value = dt.datetime.fromisoformat(text)
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None, "Not a valid date and time."
    return value, None


def _utc_bound(text: str) -> tuple[dt.datetime | None, str | None]:
    """A date (local midnight) or date-time (local unless it has an offset) in naive UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
        return value.astimezone(dt.UTC).replace(tzinfo=None), None
    except (ValueError, OverflowError):
        return None, "Not a valid date or date and time."


def _dicom_date(text: str) -> tuple[str | None, str | None]:
    """``YYYY-MM-DD`` (or empty) as DICOM's ``YYYYMMDD``."""
    if not text:
        return "", None
    try:
        return dt.date.fromisoformat(text).strftime("%Y%m%d"), None
    except ValueError:
        return None, "Not a calendar date (YYYY-MM-DD)."


def _day(text: str | None) -> dt.date:
    if text is None:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        _not_accepted({"date": "Not a calendar date (YYYY-MM-DD)."})


def _step_key(key: int) -> int:
    if not 1 <= key <= openapi.KEY_MAX:
        raise ApiError(404, f"There is no scheduled procedure step with key {key}.")
    return key


def _edit_refused(error: EditError, *, conflict: bool = False) -> NoReturn:
    # A step whose status forbids the change is a conflict with its state, not bad input.
    status = 409 if conflict and STATUS in error.errors else 400
    _not_accepted(error.errors, status)


# --- views ----------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI document (no authentication needed)."""
    return jsonify(openapi.document())


@bp.get("/items")
def list_items() -> Response:
    """The scheduled procedure steps of one day, filtered, ordered by start."""
    user = _require(Role.VIEWER)
    args = _query(openapi.ITEM_FILTERS)
    statuses = request.args.getlist("status")
    bad = [s for s in statuses if openapi.STATUS_FILTER.problem(s)]
    if bad:
        _not_accepted({"status": openapi.STATUS_FILTER.problem(bad[0]) or ""})
    day = _day(args.get("date"))
    items = items_for_day(
        db_session(),
        day,
        modality=args.get("modality") or None,
        station=args.get("station") or None,
        statuses=frozenset(SpsStatus(s) for s in statuses) if statuses else None,
        text=args.get("q") or None,
    )
    audit_events.items_read(user.username, items, f"GET /api/v1/items?date={day.isoformat()}")
    return jsonify({"date": day.isoformat(), "items": [item_json(item) for item in items]})


@bp.get("/items/<int:key>")
def show_item(key: int) -> Response:
    """One scheduled procedure step, whatever its status."""
    user = _require(Role.VIEWER)
    item = get_item(db_session(), _step_key(key))
    if item is None:
        raise ApiError(404, f"There is no scheduled procedure step with key {key}.")
    audit_events.items_read(user.username, [item], f"GET /api/v1/items/{key}")
    return jsonify(item_json(item))


@bp.post("/items")
def create_item() -> Response:
    """Enter an order: one requested procedure with one step (as the page's form)."""
    user = _require(Role.EDITOR)
    values = _checked(_json_object(), openapi.ORDER_FIELDS, openapi.REQUIRED_ORDER_FIELDS)
    try:
        with writer().begin() as session:
            item = create_order(session, NewOrder(**values), state().settings, user.username)
    except EditError as exc:
        _edit_refused(exc)
    logger.info("API: %s created step %s", user.username, item.step_key)
    response = jsonify(item_json(item))
    response.status_code = 201
    response.headers["Location"] = url_for("api.show_item", key=item.step_key)
    return response


@bp.patch("/items/<int:key>")
def update_item(key: int) -> Response:
    """Correct or reschedule an item; fields not sent stay as they are."""
    user = _require(Role.EDITOR)
    values = _checked(_json_object(), openapi.CHANGE_FIELDS)
    reason = values.pop("reason", "")
    try:
        with writer().begin() as session:
            item = edit_step(
                session,
                _step_key(key),
                StepChanges(**values),
                user.username,
                reason,
                settings=state().settings,
            )
    except UnknownStepError:
        raise ApiError(404, f"There is no scheduled procedure step with key {key}.") from None
    except EditError as exc:
        _edit_refused(exc)
    return jsonify(item_json(item))


@bp.post("/items/<int:key>/cancel")
def cancel_item(key: int) -> Response:
    """Cancel an item: modalities no longer see it."""
    return _change_status(key, cancel_step)


@bp.post("/items/<int:key>/restore")
def restore_item(key: int) -> Response:
    """Undo a cancel: the step gets back the status it had."""
    return _change_status(key, restore_step)


def _change_status(key: int, change: Callable[..., WorklistItem]) -> Response:
    """Cancel or restore one step as the token's user, with the body's optional reason."""
    user = _require(Role.EDITOR)
    reason = _checked(_json_object(optional=True), openapi.STATUS_FIELDS).get("reason", "")
    try:
        with writer().begin() as session:
            item = change(session, _step_key(key), user.username, reason)
    except UnknownStepError:
        raise ApiError(404, f"There is no scheduled procedure step with key {key}.") from None
    except EditError as exc:
        _edit_refused(exc, conflict=True)
    return jsonify(item_json(item))


@bp.get("/messages")
def list_messages() -> Response:
    """Received HL7 messages, newest first, one page at a time."""
    _require(Role.VIEWER)
    args = _query(openapi.MESSAGE_FILTERS)
    errors: dict[str, str] = {}
    bounds: dict[str, dt.datetime | None] = {}
    for name in ("since", "until"):
        bounds[name], problem = _utc_bound(args[name]) if name in args else (None, None)
        if problem:
            errors[name] = problem
    if errors:
        _not_accepted(errors)
    limit = int(args.get("limit", 100))
    filters = MessageFilter(
        message_type=args.get("type") or None,
        outcome=args.get("outcome") or None,
        received_from=bounds["since"],
        received_before=bounds["until"],
    )
    before = int(args["before"]) if "before" in args else None
    # One more than a page tells whether there is a next one.
    found = recent_messages(db_session(), limit=limit + 1, before_key=before, filters=filters)
    page = found[:limit]
    return jsonify(
        {
            "messages": [_message_json(m) for m in page],
            "next_before": page[-1].key if len(found) > limit else None,
        }
    )


@bp.get("/messages/<int:key>")
def show_message(key: int) -> Response:
    """One HL7 message with its raw text and the ACK sent."""
    user = _require(Role.VIEWER)
    session = db_session()
    detail = message_detail(session, key) if 1 <= key <= openapi.KEY_MAX else None
    if detail is None:
        raise ApiError(404, f"There is no HL7 message with key {key}.")
    audit_events.message_read(
        user.username, message_changes(session, key), f"GET /api/v1/messages/{key}"
    )
    return jsonify(
        {
            **_message_json(detail.summary),
            "processed_at": _utc(detail.processed_at),
            "raw": _hl7_text(detail.raw),
            "ack": _hl7_text(detail.ack),
        }
    )


@bp.get("/aes")
def list_aes() -> Response:
    """The calling AE titles that query the worklist, and how they fare today."""
    _require(Role.VIEWER)
    activity = scanner_activity_of(db_session(), local_midnight_utc())
    return jsonify(
        {
            "aes": [
                {
                    "calling_ae_title": a.calling_ae_title,
                    "last_seen": _utc(a.last_seen),
                    "last_peer_address": a.last_peer_address,
                    "queries_today": a.queries_since,
                    "matches_today": a.matches_since,
                    "failures_today": a.failures_since,
                    "total_queries": a.total_queries,
                }
                for a in activity
            ]
        }
    )
