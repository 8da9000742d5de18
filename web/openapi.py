"""The OpenAPI document of the JSON API, built from the same value specs the API checks."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mwl.domain import SpsStatus, WorklistItem
from mwl.orders.values import PRIORITIES, SEXES
from mwl.worklist.fields import FIELDS, Kind

API_VERSION = "1.0.0"
# Database keys are INTEGER columns; a larger number cannot name a row, and SQLite
# would refuse to bind it.
KEY_MAX = 2**31 - 1

# Values a modality receives: no control characters and no backslash, the DICOM
# value separator (PS3.5 6.2). The same rule as mwl.orders.values, written as a pattern.
_CONTROL = r"\x00-\x1f\x7f-\x9f"
TEXT = rf"^[^\\{_CONTROL}]*$"
# Free text that is never sent to a modality (a reason, a search).
PLAIN = rf"^[^{_CONTROL}]*$"
# AE: printable ASCII without the backslash (PS3.5 table 6.2-1).
AE = r"^[ -\[\]-~]*$"
# CS: letters, digits, space and underscore; the API upper-cases (as the page does).
CODE = r"^ *[A-Za-z0-9_][A-Za-z0-9_ ]*$"
# PN: up to three component groups of up to five components (PS3.5 6.2.1.1).
_PN_PART = rf"[^=^\\{_CONTROL}]*"
_PN_GROUP = rf"{_PN_PART}(\^{_PN_PART}){{0,4}}"
PERSON_NAME = rf"^{_PN_GROUP}(={_PN_GROUP}){{0,2}}$"
# Calendar days of a worklist, years 1900 to 2999, written out so that the pattern
# admits real dates only (a generator that follows the document then makes no
# 2031-02-30): 31-day months, 30-day months, February, and 29 February in leap years.
_YEAR = r"(19|2\d)\d{2}"
_LEAP_YEAR = r"((19|2\d)(0[48]|[2468][048]|[13579][26])|2[048]00)"
_DAY = (
    rf"({_YEAR}-((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)"
    rf"|02-(0[1-9]|1\d|2[0-8]))|{_LEAP_YEAR}-02-29)"
)
_TIME = r"T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?"
DATE = rf"^{_DAY}$"
OPTIONAL_DATE = rf"^({_DAY})?$"
DATE_TIME = rf"^{_DAY}{_TIME}$"
DATE_OR_DATE_TIME = rf"^{_DAY}({_TIME})?$"
INTEGER = r"^[0-9]{1,10}$"


@dataclass(frozen=True)
class Spec:
    """One value the API accepts: its JSON Schema, and the same rules checked in Python.

    The API checks every request against these specs before any core service sees
    it, so the document promises nothing the code does not hold to.
    """

    description: str
    type: str = "string"  # string, boolean, integer
    max_length: int | None = None
    pattern: str | None = None
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    example: Any = None

    def schema(self) -> dict[str, Any]:
        """The JSON Schema (OpenAPI 3.0 dialect) of the value."""
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        if self.enum:
            schema["enum"] = list(self.enum)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.example is not None:
            schema["example"] = self.example
        return schema

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` (as decoded from JSON), or None."""
        if self.type == "boolean":
            return None if isinstance(value, bool) else "Must be true or false."
        if self.type == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return "Must be a whole number."
            if self.minimum is not None and value < self.minimum:
                return f"Must be at least {self.minimum}."
            if self.maximum is not None and value > self.maximum:
                return f"Must be at most {self.maximum}."
            return None
        if not isinstance(value, str):
            return "Must be a string."
        if self.max_length is not None and len(value) > self.max_length:
            return f"At most {self.max_length} characters (this has {len(value)})."
        if self.enum and value not in self.enum:
            return "Must be one of: " + ", ".join(repr(v) for v in self.enum) + "."
        if self.pattern is not None and re.search(self.pattern, value) is None:
            return _PATTERN_MESSAGES.get(self.pattern, "Not in the expected format.")
        return None

    def query_problem(self, raw: str) -> str | None:
        """What is wrong with ``raw``, this value as it came in a query string, or None."""
        if self.type == "integer":
            if re.search(INTEGER, raw) is None:
                return "Must be a whole number."
            return self.problem(int(raw))
        return self.problem(raw)


_PATTERN_MESSAGES = {
    TEXT: "Line breaks, tabs, other control characters and the backslash are not allowed.",
    PLAIN: "Line breaks, tabs and other control characters are not allowed.",
    AE: "An AE title has only ASCII letters, digits, spaces and punctuation (no backslash).",
    CODE: "Letters A-Z, digits, space and underscore; not empty.",
    PERSON_NAME: (
        "A DICOM person name: Family^Given^Middle^Prefix^Suffix, at most three groups"
        " separated by '='; no control characters or backslash."
    ),
    DATE: "A date as YYYY-MM-DD (years 1900 to 2999).",
    OPTIONAL_DATE: "A date as YYYY-MM-DD (years 1900 to 2999), or empty.",
    DATE_TIME: (
        "A date and time as YYYY-MM-DDTHH:MM[:SS], with an offset (Z, +01:00) or"
        " without one (local time of the department)."
    ),
    DATE_OR_DATE_TIME: "A date (YYYY-MM-DD) or a date and time (YYYY-MM-DDTHH:MM[:SS][offset]).",
}


def _lo(description: str, example: str | None = None) -> Spec:
    return Spec(description, max_length=64, pattern=TEXT, example=example)


def _sh(description: str, example: str | None = None) -> Spec:
    return Spec(description, max_length=16, pattern=TEXT, example=example)


def _pn(description: str, example: str | None = None) -> Spec:
    return Spec(description, max_length=64, pattern=PERSON_NAME, example=example)


_START = Spec(
    "Scheduled start. Without an offset it is the department's local time (as on the"
    " worklist); with one it is converted to local time.",
    pattern=DATE_TIME,
    example="2030-05-06T14:30:00",
)
_BIRTH_DATE = Spec("Patient's Birth Date, YYYY-MM-DD, or empty.", pattern=OPTIONAL_DATE)
_SEX = Spec("Patient's Sex: M, F, O, or empty.", enum=("", *SEXES))
_MODALITY = Spec("Modality (CS), e.g. CT.", max_length=16, pattern=CODE, example="CT")
_STATION = Spec("Scheduled Station AE Title.", max_length=16, pattern=AE, example="CT01")
REASON = Spec(
    "Why (kept in the audit trail).", max_length=255, pattern=PLAIN, example="Patient asked"
)

# The fields of POST /items (mwl.orders.entry.NewOrder).
ORDER_FIELDS: Mapping[str, Spec] = {
    "modality": _MODALITY,
    "scheduled_station_ae_title": dataclasses.replace(
        _STATION,
        description="Scheduled Station AE Title; empty: the station rules of the settings decide.",
    ),
    "start": dataclasses.replace(_START, description=_START.description + " Default: now."),
    "requested_procedure_description": _lo(
        "Requested Procedure Description.", "CT head without contrast"
    ),
    "patient_id": _lo(
        "Patient ID; required unless unidentified is true. A patient the worklist knows"
        " keeps their demographics where these are left empty."
    ),
    "issuer_of_patient_id": _lo(
        "Issuer of Patient ID; empty: the issuer of the one patient with this ID."
    ),
    "patient_name": _pn(
        "Patient's Name (Family^Given); required for a patient the worklist does not know.",
        "Doe^Jane",
    ),
    "patient_birth_date": _BIRTH_DATE,
    "patient_sex": _SEX,
    "unidentified": Spec(
        "An emergency patient without a known ID: a temporary ID (and name, if none is"
        " given) is generated.",
        type="boolean",
    ),
    "priority": Spec("Requested Procedure Priority.", enum=PRIORITIES, example="STAT"),
    "referring_physician_name": _pn("Referring Physician's Name."),
    "reason_for_the_requested_procedure": _lo("Reason for the Requested Procedure."),
    "scheduled_station_name": _sh("Scheduled Station Name."),
    "scheduled_procedure_step_location": _sh("Scheduled Procedure Step Location."),
}
REQUIRED_ORDER_FIELDS = ("modality",)

# The fields of PATCH /items/{key} (mwl.orders.edits.StepChanges) and the reason.
CHANGE_FIELDS: Mapping[str, Spec] = {
    "patient_name": _pn("Patient's Name (Family^Given).", "Doe^Jane"),
    "patient_birth_date": _BIRTH_DATE,
    "patient_sex": _SEX,
    "start": dataclasses.replace(_START, description=_START.description + " Reschedules."),
    "modality": _MODALITY,
    "scheduled_station_ae_title": _STATION,
    "scheduled_station_name": _sh("Scheduled Station Name."),
    "scheduled_procedure_step_location": _sh("Scheduled Procedure Step Location."),
    "scheduled_procedure_step_description": _lo("Scheduled Procedure Step Description."),
    "requested_procedure_description": _lo("Requested Procedure Description."),
    "scheduled_performing_physician_name": _pn("Scheduled Performing Physician's Name."),
    "patient_id": _lo("Patient ID: only a temporary ID of an unidentified patient may change."),
    "issuer_of_patient_id": _lo("Issuer of Patient ID (with a temporary patient ID only)."),
    "reason": REASON,
}
STATUS_FIELDS: Mapping[str, Spec] = {"reason": REASON}

# Query parameters.
ITEM_FILTERS: Mapping[str, Spec] = {
    "date": Spec("The day, YYYY-MM-DD (local time); default: today.", pattern=DATE),
    "modality": Spec("Only this modality (exact).", max_length=16, pattern=PLAIN),
    "station": Spec("Only this Scheduled Station AE Title (exact).", max_length=16, pattern=PLAIN),
    "q": Spec(
        "Free text: every word must occur in the patient's name, patient ID or accession number.",
        max_length=200,
        pattern=PLAIN,
    ),
}
STATUS_FILTER = Spec("Scheduled Procedure Step Status.", enum=tuple(s.value for s in SpsStatus))
OUTCOMES = ("AA", "AE", "AR", "RECEIVED")
MESSAGE_FILTERS: Mapping[str, Spec] = {
    "type": Spec(
        "Message type from its start (MSH-9), e.g. ORM or ORM^O01.", max_length=40, pattern=PLAIN
    ),
    "outcome": Spec("The ACK code sent, or RECEIVED (not processed yet).", enum=OUTCOMES),
    "since": Spec(
        "Received at or after (a date is its local midnight; no offset: local time).",
        pattern=DATE_OR_DATE_TIME,
    ),
    "until": Spec("Received before (as since).", pattern=DATE_OR_DATE_TIME),
    "before": Spec(
        "Only messages with a smaller key: next_before of the previous page.",
        type="integer",
        minimum=1,
        maximum=KEY_MAX,
    ),
    "limit": Spec("At most this many (default 100).", type="integer", minimum=1, maximum=500),
}
KEY = Spec("Database key.", type="integer", minimum=1, maximum=KEY_MAX, example=1)


def _item_properties() -> dict[str, Any]:
    """The members of an item (web.api.item_json): one per stored field, key and status."""
    string = {"type": "string"}
    code = {
        "type": "object",
        "additionalProperties": False,
        "required": ["value", "scheme", "meaning"],
        "properties": {"value": string, "scheme": string, "meaning": string},
    }
    by_kind: dict[Kind, dict[str, Any]] = {
        Kind.CODE: {**code, "nullable": True},
        Kind.CODES: {"type": "array", "items": code},
        Kind.START: {
            "type": "string",
            "description": "Local time of the department, YYYY-MM-DDTHH:MM:SS, no offset.",
        },
        Kind.DATE: {
            "type": "string",
            "description": "YYYY-MM-DD; empty when unknown; as received when not a date.",
        },
        Kind.STATUS: {"type": "string", "enum": list(STATUS_FILTER.enum)},
    }
    properties: dict[str, Any] = {
        "key": {"type": "integer", "description": "Database key of the step (its URL)."},
        "status": {
            "type": "string",
            "enum": list(STATUS_FILTER.enum),
            "description": "Scheduled Procedure Step Status (same as"
            " scheduled_procedure_step_status).",
        },
    }
    # In the order of WorklistItem's attributes, as the document has always listed
    # them ("required" is a list): the document served stays the same.
    position = {f.name: index for index, f in enumerate(dataclasses.fields(WorklistItem))}
    for field in sorted(FIELDS, key=lambda f: position[f.name]):
        properties[field.api_name] = by_kind.get(field.kind, string)
    return properties


def _object(properties: Mapping[str, Any], *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": dict(properties),
    }
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_UNAUTHORIZED = {
    **_error("No token, or not a valid one."),
    "headers": {
        "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"},
    },
}
_READ_ERRORS = {
    "401": _UNAUTHORIZED,
    "403": _error("The token's user has no role that may read."),
}
_WRITE_ERRORS = {
    "400": _json(_ref("ValidationError"), "The body or a value was not accepted; nothing stored."),
    "401": _UNAUTHORIZED,
    "403": _error("The token's user is not an editor."),
    "413": _error("The body is larger than 64 KiB."),
    "415": _error("The body is not JSON (Content-Type: application/json)."),
}


def _query(name: str, spec: Spec) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": spec.schema()}


def _body(fields: Mapping[str, Spec], required: tuple[str, ...], optional: bool) -> dict[str, Any]:
    schema = _object({name: spec.schema() for name, spec in fields.items()}, required=required)
    return {"required": not optional, "content": {"application/json": {"schema": schema}}}


_KEY_PARAMETER = {"name": "key", "in": "path", "required": True, "schema": KEY.schema()}


def _status_operation(action: str, summary: str) -> dict[str, Any]:
    return {
        "operationId": f"{action}Item",
        "summary": summary,
        "parameters": [_KEY_PARAMETER],
        "requestBody": _body(STATUS_FIELDS, (), optional=True),
        "responses": {
            "200": _json(_ref("Item"), "The item as it is now."),
            **_WRITE_ERRORS,
            "404": _error("No step has this key."),
            "409": _json(_ref("ValidationError"), f"The step's status does not allow {action}."),
        },
    }


# DICOMweb (PS3.18 chapters 14 and 15, web.dicomweb): DICOM JSON in and out.
DICOM_JSON = "application/dicom+json"
# A UID (PS3.5 9.1): digits and dots, at most 64 characters.
UID = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
_DICOM_DATASET = {
    "type": "object",
    "description": "A Data Set in the DICOM JSON Model (PS3.18 F.2): tag (ggggeeee) -> element.",
    "additionalProperties": {"type": "object"},
}


def _dicom_json(description: str, *, single: bool = False) -> dict[str, Any]:
    schema = {"type": "array", "items": _DICOM_DATASET}
    xml = {"schema": {"type": "string", "description": "Native DICOM Model (PS3.19 A.1)."}}
    content: dict[str, Any] = {
        DICOM_JSON: {"schema": schema},
        'multipart/related; type="application/dicom+xml"': xml,
    }
    if single:
        content["application/dicom+xml"] = xml
    return {"description": description, "content": content}


def _dicomweb_errors(*codes: str) -> dict[str, Any]:
    meanings = {
        "400": "A parameter or the payload was not accepted; the error says why.",
        "404": "No Modality Performed Procedure Step has this UID.",
        "406": "The Accept header admits none of the media types served.",
        "409": "The UID is in use (create), or the step may no longer take this change.",
        "413": "The payload is larger than the bound (1 MiB).",
        "415": f"The payload is not {DICOM_JSON}.",
        "503": "The database is unavailable.",
    }
    return {code: _error(meanings[code]) for code in codes}


def _includefield() -> dict[str, Any]:
    return {
        "name": "includefield",
        "in": "query",
        "required": False,
        "description": "Attributes to return (keywords or tags, comma-separated), or all.",
        "style": "form",
        "explode": True,
        "schema": {"type": "array", "items": {"type": "string", "maxLength": 256}},
    }


def _dicomweb_paths() -> dict[str, Any]:
    """The MWL-RS and MPPS-RS resources (PS3.18 14.4, 15.4-15.6)."""
    from web import params  # web.params reads this module's KEY_MAX

    uid = {
        "name": "uid",
        "in": "path",
        "required": True,
        "description": "The MPPS UID (the SOP Instance UID of DIMSE MPPS).",
        "schema": {"type": "string", "pattern": UID, "maxLength": 64},
    }
    matching = {
        "name": "match",
        "in": "query",
        "required": False,
        "description": (
            "Matching keys, {attributeID}={value}: a keyword or tag, sequence paths"
            " joined by '.' (00400100.00080060=CT); the matching of the DIMSE worklist."
        ),
        "style": "form",
        "explode": True,
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
    }
    return {
        "/dicomweb/modality-scheduled-procedure-steps": {
            "get": {
                "operationId": "searchScheduledProcedureSteps",
                "summary": "MWL-RS Search (PS3.18 14.4): the worklist as C-FIND matches it",
                "parameters": [
                    matching,
                    _includefield(),
                    _query(
                        "fuzzymatching",
                        Spec("Not supported: a Warning says so.", enum=("true", "false")),
                    ),
                    _query(
                        "offset",
                        Spec(
                            "Matches to skip.",
                            "integer",
                            minimum=0,
                            maximum=params.DICOMWEB_MAX_OFFSET,
                        ),
                    ),
                    _query(
                        "limit",
                        Spec(
                            "Most matches returned (beyond the bound: the bound, and a Warning).",
                            "integer",
                            minimum=1,
                        ),
                    ),
                ],
                "responses": {
                    "200": {
                        **_dicom_json("The matches, one Data Set per scheduled procedure step."),
                        "headers": {"Warning": {"schema": {"type": "string"}}},
                    },
                    "204": {"description": "No step matches."},
                    **_READ_ERRORS,
                    **_dicomweb_errors("400", "406", "503"),
                },
            }
        },
        "/dicomweb/modality-performed-procedure-steps/{uid}": {
            "get": {
                "operationId": "retrievePerformedProcedureStep",
                "summary": "MPPS-RS Retrieve (PS3.18 15.6, N-GET)",
                "parameters": [uid, _includefield()],
                "responses": {
                    "200": _dicom_json("The step's attributes (one Data Set).", single=True),
                    **_READ_ERRORS,
                    **_dicomweb_errors("400", "404", "406", "503"),
                },
            },
            "post": {
                "operationId": "createOrUpdatePerformedProcedureStep",
                "summary": "MPPS-RS Create (15.4, N-CREATE) or, with ?update, Update (15.5, N-SET)",
                "parameters": [
                    uid,
                    {
                        "name": "update",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,
                        "description": "Present: an Update of an existing step.",
                        "schema": {"type": "string", "maxLength": 0},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        DICOM_JSON: {
                            "schema": {
                                "oneOf": [
                                    _DICOM_DATASET,
                                    {
                                        "type": "array",
                                        "items": _DICOM_DATASET,
                                        "minItems": 1,
                                        "maxItems": 1,
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "Updated."},
                    "201": {
                        "description": "Created.",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                    "403": _error("The token's user is not an editor."),
                    **_dicomweb_errors("400", "404", "406", "409", "413", "415", "503"),
                },
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``/api/v1``, served at ``/api/v1/openapi.json``."""
    item_list = _object(
        {
            "date": {"type": "string", "description": "The day listed, YYYY-MM-DD."},
            "items": {"type": "array", "items": _ref("Item")},
        },
        required=("date", "items"),
    )
    message = {
        "key": {"type": "integer"},
        "received_at": {"type": "string", "description": "UTC, ISO 8601 with offset."},
        "message_type": {"type": "string", "description": "MSH-9, e.g. ORM^O01."},
        "message_control_id": {"type": "string", "description": "MSH-10."},
        "sending_application": {"type": "string", "description": "MSH-3."},
        "sending_facility": {"type": "string", "description": "MSH-4."},
        "peer_address": {"type": "string"},
        "outcome": {"type": "string", "description": "AA, AE, AR, or RECEIVED."},
        "error": {"type": "string"},
    }
    message_detail = {
        **message,
        "processed_at": {"type": "string", "nullable": True},
        "raw": {"type": "string", "description": "The message, segments ending in CR."},
        "ack": {"type": "string", "nullable": True, "description": "The ACK sent, if any."},
    }
    ae = {
        "calling_ae_title": {"type": "string"},
        "last_seen": {"type": "string", "description": "UTC, ISO 8601 with offset."},
        "last_peer_address": {"type": "string"},
        "queries_today": {"type": "integer"},
        "matches_today": {"type": "integer"},
        "failures_today": {"type": "integer"},
        "total_queries": {"type": "integer"},
    }
    status_parameter = {
        "name": "status",
        "in": "query",
        "required": False,
        "description": "Only steps with one of these statuses (repeat the parameter).",
        "style": "form",
        "explode": True,
        "schema": {"type": "array", "items": STATUS_FILTER.schema()},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mwl JSON API",
            "version": API_VERSION,
            "description": (
                "The worklist, the HL7 message log and the modalities that query, for"
                " scripts. Authenticate with `Authorization: Bearer <token>`; create a"
                " token with `mwl token add USER` or on the page /account/tokens. A token"
                " acts with its user's role: viewers read, editors also create, change,"
                " cancel and restore items."
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/v1/items": {
                "get": {
                    "operationId": "listItems",
                    "summary": "The scheduled procedure steps of one day, by start",
                    "parameters": [
                        *(_query(name, spec) for name, spec in ITEM_FILTERS.items()),
                        status_parameter,
                    ],
                    "responses": {
                        "200": _json(_ref("ItemList"), "The day's items."),
                        "400": _json(_ref("ValidationError"), "A parameter was not accepted."),
                        **_READ_ERRORS,
                    },
                },
                "post": {
                    "operationId": "createItem",
                    "summary": "Enter an order (one requested procedure, one step)",
                    "requestBody": _body(ORDER_FIELDS, REQUIRED_ORDER_FIELDS, optional=False),
                    "responses": {
                        "201": {
                            **_json(_ref("Item"), "The new item."),
                            "headers": {
                                "Location": {
                                    "schema": {"type": "string"},
                                    "description": "The item's URL.",
                                }
                            },
                        },
                        **_WRITE_ERRORS,
                    },
                },
            },
            "/api/v1/items/{key}": {
                "get": {
                    "operationId": "getItem",
                    "summary": "One scheduled procedure step, whatever its status",
                    "parameters": [_KEY_PARAMETER],
                    "responses": {
                        "200": _json(_ref("Item"), "The item."),
                        **_READ_ERRORS,
                        "404": _error("No step has this key."),
                    },
                },
                "patch": {
                    "operationId": "updateItem",
                    "summary": "Correct or reschedule an item; fields left out stay as they are",
                    "parameters": [_KEY_PARAMETER],
                    "requestBody": _body(CHANGE_FIELDS, (), optional=False),
                    "responses": {
                        "200": _json(_ref("Item"), "The item as it is now."),
                        **_WRITE_ERRORS,
                        "404": _error("No step has this key."),
                    },
                },
            },
            "/api/v1/items/{key}/cancel": {
                "post": _status_operation("cancel", "Cancel an item (modalities no longer see it)")
            },
            "/api/v1/items/{key}/restore": {"post": _status_operation("restore", "Undo a cancel")},
            "/api/v1/messages": {
                "get": {
                    "operationId": "listMessages",
                    "summary": "Received HL7 messages, newest first (no bodies)",
                    "parameters": [_query(name, spec) for name, spec in MESSAGE_FILTERS.items()],
                    "responses": {
                        "200": _json(_ref("MessageList"), "One page of the log."),
                        "400": _json(_ref("ValidationError"), "A parameter was not accepted."),
                        **_READ_ERRORS,
                    },
                }
            },
            "/api/v1/messages/{key}": {
                "get": {
                    "operationId": "getMessage",
                    "summary": "One HL7 message with its raw text and the ACK sent",
                    "parameters": [_KEY_PARAMETER],
                    "responses": {
                        "200": _json(_ref("MessageDetail"), "The message."),
                        **_READ_ERRORS,
                        "404": _error("No message has this key."),
                    },
                }
            },
            **_dicomweb_paths(),
            "/api/v1/aes": {
                "get": {
                    "operationId": "listAes",
                    "summary": "The calling AE titles that query the worklist, last seen first",
                    "responses": {
                        "200": _json(_ref("AeList"), "One entry per calling AE title."),
                        **_READ_ERRORS,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "An API token (mwl_...), from `mwl token add` or /account/tokens."
                    ),
                }
            },
            "schemas": {
                "Item": _object(_item_properties(), required=tuple(_item_properties())),
                "ItemList": item_list,
                "Message": _object(message, required=tuple(message)),
                "MessageDetail": _object(message_detail, required=tuple(message_detail)),
                "MessageList": _object(
                    {
                        "messages": {"type": "array", "items": _ref("Message")},
                        "next_before": {
                            "type": "integer",
                            "nullable": True,
                            "description": "Pass as before for the next (older) page.",
                        },
                    },
                    required=("messages", "next_before"),
                ),
                "Ae": _object(ae, required=tuple(ae)),
                "AeList": _object(
                    {"aes": {"type": "array", "items": _ref("Ae")}}, required=("aes",)
                ),
                "Error": _object(
                    {"error": {"type": "string", "description": "What went wrong."}},
                    required=("error",),
                ),
                "ValidationError": _object(
                    {
                        "error": {"type": "string"},
                        "errors": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "Field name -> what is wrong with its value.",
                        },
                    },
                    required=("error", "errors"),
                ),
            },
        },
    }
