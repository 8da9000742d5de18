"""DICOMweb under /dicomweb: MWL-RS Search and MPPS-RS Create, Update, Retrieve (PS3.18 14, 15).

HTTP only: the bearer token and the role (as the JSON API, :mod:`web.api`), the
paging and size bounds (:mod:`web.params`), content negotiation, status codes and
headers. What the parameters and payloads mean in DICOM, and the matching and MPPS
rules, are the DICOM adapter's, lent by the composition root
(:class:`web.store.DicomWebService`): a REST search runs the C-FIND pipeline of the
SCP, and an MPPS the path of N-CREATE and N-SET.

Answers are ``application/dicom+json`` (the chapters' Default media type), or the
same Data Sets in XML (:mod:`web.dicomxml`): ``multipart/related;
type="application/dicom+xml"`` (one part per Data Set) and, for a Retrieve,
``application/dicom+xml``. Payloads are DICOM JSON only. An Accept that admits none
of these gets 406 (docs/conformance-statement.md says so).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, request, url_for

from mwl.admin.users import Role
from web import audit_events, params
from web.api import ApiError, authenticate, error_response, require
from web.dicomxml import DICOM_XML, MULTIPART_XML, multipart, native_dicom_model
from web.store import DicomWebService, state

logger = logging.getLogger(__name__)

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
# What the body of a create or update may be labelled (plain JSON is DICOM JSON too).
_PAYLOAD_TYPES = frozenset({DICOM_JSON, "application/json"})
_RESERVED = frozenset({"includefield", "fuzzymatching", "offset", "limit"})
# PS3.18 8.3.4.4 (QIDO), for a page cut short by the server's bound.
_LIMIT_WARNING = (
    "The number of results exceeded the maximum supported by the server."
    " Additional results can be requested."
)


@bp.errorhandler(ApiError)
def _error(error: ApiError) -> Response:
    return error_response(error.status, error.message, errors=error.errors, headers=error.headers)


@bp.before_request
def _authenticated() -> None:
    authenticate()


def _service() -> DicomWebService:
    service = state().dicomweb
    if service is None:
        raise ApiError(503, "DICOMweb is not available in this process.")
    return service


# What each transaction can answer in, the default first.
_LISTS = (DICOM_JSON, "application/json", MULTIPART_XML)
_ONE = (DICOM_JSON, "application/json", DICOM_XML, MULTIPART_XML)


def _negotiated(offered: tuple[str, ...] = _ONE) -> str:
    """The media type to answer in; 406 when the Accept header admits none offered."""
    if not request.headers.get("Accept"):
        return DICOM_JSON
    chosen = request.accept_mimetypes.best_match(list(offered))
    if chosen is None:
        raise ApiError(406, "Send Accept: " + " or ".join(offered) + ".")
    return chosen


def _datasets(datasets: list[dict[str, Any]], media_type: str) -> Response:
    """The Data Sets in ``media_type``: a JSON array, XML parts, or one XML document."""
    if media_type == MULTIPART_XML:
        body, content_type = multipart((native_dicom_model(d) for d in datasets), DICOM_XML)
        response = Response(body, content_type=content_type)
    elif media_type == DICOM_XML:
        (dataset,) = datasets
        response = Response(native_dicom_model(dataset), mimetype=DICOM_XML)
    else:
        response = Response(json.dumps(datasets, ensure_ascii=False), mimetype=DICOM_JSON)
    response.headers["Cache-Control"] = "no-store"  # worklist items are patient data
    response.headers["Vary"] = "Accept"
    return response


def _warning(response: Response, text: str) -> None:
    # RFC 7234 5.5 as PS3.18 8.3.4 uses it: code 299, the agent, the quoted text.
    response.headers.add("Warning", f'299 {request.host} "{text}"')


def _number(name: str, low: int, high: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10):
        raise ApiError(400, f"{name} must be a whole number, not {raw[:40]!r}.")
    value = int(raw)
    if value < low:
        raise ApiError(400, f"{name} must be at least {low}.")
    if high is not None and value > high:
        raise ApiError(400, f"{name} must be at most {high}.")
    return value


def _fuzzy() -> bool:
    values = request.args.getlist("fuzzymatching")
    if len(values) > 1 or any(v not in ("true", "false") for v in values):
        raise ApiError(400, "fuzzymatching is given once, as true or false.")
    return values == ["true"]


def _bounded_parameters() -> list[tuple[str, str]]:
    pairs = list(request.args.items(multi=True))
    if len(pairs) > params.DICOMWEB_MAX_PARAMETERS:
        raise ApiError(400, f"At most {params.DICOMWEB_MAX_PARAMETERS} query parameters.")
    for name, value in pairs:
        if len(name) > params.DICOMWEB_MAX_VALUE_LENGTH:
            raise ApiError(400, "A query parameter name is too long.")
        if len(value) > params.DICOMWEB_MAX_VALUE_LENGTH:
            raise ApiError(
                400, f"{name[:64]}: at most {params.DICOMWEB_MAX_VALUE_LENGTH} characters."
            )
    for name in ("offset", "limit"):
        if len(request.args.getlist(name)) > 1:
            raise ApiError(400, f"{name} is given once.")
    return pairs


@bp.get("/modality-scheduled-procedure-steps")
def search() -> Response:
    """Search Transaction (PS3.18 14.4): the worklist as a C-FIND with these keys gets it."""
    user = require(Role.VIEWER)
    media_type = _negotiated(_LISTS)
    pairs = _bounded_parameters()
    fuzzy = _fuzzy()
    offset = _number("offset", 0, params.DICOMWEB_MAX_OFFSET) or 0
    asked = _number("limit", 1, None)
    limit = params.DICOMWEB_MAX_LIMIT if asked is None else min(asked, params.DICOMWEB_MAX_LIMIT)
    # One more than the page tells whether the server's bound cut it short.
    answer = _service().search(
        [(n, v) for n, v in pairs if n not in _RESERVED or n == "includefield"],
        offset=offset,
        limit=limit + 1,
        fuzzy=fuzzy,
        peer_host=request.remote_addr or "",
    )
    # Who and how many, never the keys (patient data), as the C-FIND log line.
    logger.info(
        "MWL-RS search by %s (%s): %d matches, HTTP %d",
        user.username,
        request.remote_addr,
        min(len(answer.items), limit),
        answer.status,
    )
    if answer.status >= 400:
        raise ApiError(answer.status, answer.reason)
    items = answer.items[:limit]
    audit_events.json_datasets_read(user.username, items, "MWL-RS search")
    cut = len(answer.items) > limit and (asked is None or asked > limit)
    response = _datasets(list(items), media_type) if items else Response(status=204)
    for text in answer.warnings:
        _warning(response, text)
    if cut:
        _warning(response, _LIMIT_WARNING)
    return response


def _payload() -> bytes:
    request.max_content_length = params.DICOMWEB_MAX_PAYLOAD_BYTES
    if request.mimetype not in _PAYLOAD_TYPES:
        raise ApiError(415, f"Send the Data Set as {DICOM_JSON} (PS3.18 F.2).")
    return request.get_data(cache=True)  # 413 beyond the bound


@bp.post("/modality-performed-procedure-steps/<path:uid>")
def create_or_update(uid: str) -> Response:
    """Create (PS3.18 15.4) or, with ``?update``, Update (15.5) a performed step."""
    user = require(Role.EDITOR)
    _negotiated()  # no payload in the answer, but an Accept it cannot meet is still 406
    body = _payload()
    service = _service()
    address = request.remote_addr or ""
    if "update" in request.args:
        answer = service.update_mpps(uid, body, user.username, address)
    else:
        answer = service.create_mpps(uid, body, user.username, address)
    if answer.status >= 400:
        raise ApiError(answer.status, answer.reason)
    response = Response(status=answer.status)
    if answer.status == 201:
        response.headers["Location"] = url_for("dicomweb.retrieve", uid=uid)
    return response


@bp.get("/modality-performed-procedure-steps/<path:uid>")
def retrieve(uid: str) -> Response:
    """Retrieve Transaction (PS3.18 15.6): the step's attributes, ``includefield`` honoured."""
    user = require(Role.VIEWER)
    media_type = _negotiated()
    includes = request.args.getlist("includefield")
    if sum(len(v) for v in includes) > params.DICOMWEB_MAX_VALUE_LENGTH:
        raise ApiError(400, "includefield is too long.")
    answer = _service().retrieve_mpps(uid, includes)
    if answer.status >= 400:
        raise ApiError(answer.status, answer.reason)
    audit_events.json_datasets_read(user.username, [answer.dataset or {}], f"MPPS-RS {uid}")
    return _datasets([answer.dataset or {}], media_type)
