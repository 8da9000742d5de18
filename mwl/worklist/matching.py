"""Worklist matching: a domain WorklistQuery becomes one SQL query over the stored steps.

Matching follows PS3.4 C.2.2.2 in domain terms (the DICOM adapter has already
decided which kind of matching each key asks for):

- universal matching (C.2.2.2.3) is the absence of a :class:`~mwl.domain.KeyMatch`;
- single value (C.2.2.2.1): equality, case-sensitive;
- list of values (C.2.2.2.2 list of UID, and C.2.2.2.8 multiple values): ``IN``;
- wildcard (C.2.2.2.4): ``*`` any run, ``?`` one character; literal ``%``, ``_``
  and the escape character are escaped (``LIKE ... ESCAPE``); on SQLite, whose
  ``LIKE`` ignores ASCII case, the case-sensitive ``GLOB`` is used instead;
- range (C.2.2.2.5): inclusive bounds on the text form (DA ``YYYYMMDD`` and TM
  ``HHMMSS`` sort as text), either bound open;
- SPS Start Date and Time together (PS3.4 Table K.6-1): one range on
  ``start_datetime``; a time without a date ranges over ``start_time``.

A stored empty value (an unknown Type 2 attribute) never matches a non-universal
key (PS3.4 K.2.2.1.1.1 via C.2.2.2.1), so every non-universal condition also
requires a non-empty column.

**Patient's Name policy.** PS3.4 C.2.2.2.1 lets the SCP match PN case- and
accent-insensitively; this broker does so for Patient's Name, through the folded
``patient_name_key`` (:func:`mwl.worklist.names.name_search_key`): ``MÜLLER``, ``Müller``
and ``muller`` all find ``Müller^Hans``, and so do ``mül*`` and ``M?LLER``. It is
component-aware: a query that names fewer components than the stored name matches
on the components it names (``MULLER`` and ``MULLER^HANS`` both find
``Müller^Hans^Peter``, ``MULLER^H*`` too); an empty inner component (``^HANS``)
matches any family name. Only the alphabetic component group is compared; the
ideographic and phonetic groups of a query are ignored. The other PN keys
(physicians) match exactly as stored, case-sensitively.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from mwl.domain import (
    HIDDEN_BY_DEFAULT,
    KeyMatch,
    MatchKind,
    WorklistItem,
    WorklistQuery,
)
from mwl.store.models import Patient, RequestedProcedure, ScheduledProcedureStep
from mwl.worklist.fields import FIELDS, TEXT_KINDS, Kind
from mwl.worklist.names import name_search_key

# Pseudo-attribute for an SPS Start Time asked without a date: the HHMMSS column.
START_TIME = "start_time"
PATIENT_NAME = "patient_name"
STATUS = "scheduled_procedure_step_status"

# WorklistItem attribute -> the column it is matched on: every stored field held in
# one column as it is (mwl.worklist.fields), and the status. Patient's Name is
# matched on its folded key instead (see the module docstring); the SPS start on
# start_datetime (WorklistQuery.start_from/start_until) or, without a date, on the
# HHMMSS column; codes are returned only.
COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    field.name: field.columns[0]
    for field in FIELDS
    if field.kind in TEXT_KINDS or field.kind is Kind.STATUS
}
COLUMNS[PATIENT_NAME] = Patient.patient_name_key
COLUMNS[START_TIME] = ScheduledProcedureStep.start_time

MATCHABLE_ATTRIBUTES: frozenset[str] = frozenset(COLUMNS)
# Columns holding several DICOM values separated by a backslash (Allergies, LO 1-n):
# a key matches when it matches any one of them (PS3.4 C.2.2.2: "a value" of the
# attribute), so "Iodine" finds "Penicillin\\Iodine".
MULTI_VALUED_ATTRIBUTES: frozenset[str] = frozenset({"allergies"})
VALUE_SEPARATOR = "\\"

LIKE_ESCAPE = "\\"


def find_items(session: Session, query: WorklistQuery) -> list[WorklistItem]:
    """Return the worklist items that match ``query``, ordered by start.

    One SQL statement joins step, requested procedure and patient, with every
    condition in its ``WHERE`` clause; nothing is filtered in Python.

    Parameters
    ----------
    session
        A unit of work; only read. The items returned are detached copies, so the
        caller may close the session before it sends them anywhere.
    query
        The matching keys (PS3.4 C.2.2.2 semantics, see the module docstring).
        With no ``statuses``, steps whose status is in
        :data:`~mwl.domain.HIDDEN_BY_DEFAULT` are left out.

    Returns
    -------
    list of WorklistItem
        Ordered by start date-time, then SPS ID; at most ``query.limit`` items.

    Raises
    ------
    ValueError
        A key names an attribute that cannot be matched (a programming error in
        the adapter, not a bad query).
    sqlalchemy.exc.SQLAlchemyError
        The database failed.
    """
    statement = build_statement(query, dialect=session.get_bind().dialect.name)
    # Plain columns, not the three ORM entities: a large answer (hundreds of items)
    # then takes about a third of the time to read. Executed as Core: the ORM would
    # only add its own processing of every row.
    rows = session.connection().execute(statement.with_only_columns(*_ITEM_COLUMNS)).all()
    return [_item_from_row(row) for row in rows]


class StoredItem:
    """One matched step as the database returned it, its WorklistItem made on demand.

    ``content`` is the row (every column the item is made from), so two StoredItems
    with equal content make equal items: a response cache can key on it and skip
    making the item at all (:mod:`mwl.dicom.response`).
    """

    __slots__ = ("content", "_item")

    def __init__(self, content: Sequence[Any]) -> None:
        self.content = content
        self._item: WorklistItem | None = None

    @property
    def item(self) -> WorklistItem:
        """The detached WorklistItem of this row."""
        if self._item is None:
            self._item = _item_from_row(self.content)
        return self._item


def find_stored_items(session: Session, query: WorklistQuery) -> list[StoredItem]:
    """As :func:`find_items`, with each item left as its row until it is asked for."""
    statement = build_statement(query, dialect=session.get_bind().dialect.name)
    rows = session.connection().execute(statement.with_only_columns(*_ITEM_COLUMNS)).all()
    # Plain tuples: a cache key then holds the values only, not the result's metadata.
    return [StoredItem(tuple(row)) for row in rows]


def build_statement(
    query: WorklistQuery, dialect: str = "postgresql"
) -> Select[ScheduledProcedureStep, RequestedProcedure, Patient]:
    """The ``SELECT`` for ``query`` (exposed so tests can inspect it).

    Parameters
    ----------
    query
        The worklist query.
    dialect
        SQLAlchemy dialect name; ``sqlite`` matches wildcards with ``GLOB``.
    """
    conditions: list[ColumnElement[bool]] = [_condition(key, dialect) for key in query.keys]
    if query.statuses:
        conditions.append(ScheduledProcedureStep.status.in_(sorted(query.statuses)))
    elif not any(key.attribute == STATUS for key in query.keys):
        conditions.append(ScheduledProcedureStep.status.not_in(sorted(HIDDEN_BY_DEFAULT)))
    if query.start_from is not None:
        conditions.append(ScheduledProcedureStep.start_datetime >= query.start_from)
    if query.start_until is not None:
        conditions.append(ScheduledProcedureStep.start_datetime <= query.start_until)
    statement = (
        select(ScheduledProcedureStep, RequestedProcedure, Patient)
        .join(ScheduledProcedureStep.procedure)
        .join(RequestedProcedure.patient)
        .where(*conditions)
        .order_by(
            ScheduledProcedureStep.start_datetime,
            ScheduledProcedureStep.scheduled_procedure_step_id,
            ScheduledProcedureStep.id,
        )
    )
    if query.limit is not None:
        statement = statement.limit(query.limit)
    return statement


def _condition(key: KeyMatch, dialect: str) -> ColumnElement[bool]:
    try:
        column = COLUMNS[key.attribute]
    except KeyError:
        raise ValueError(f"{key.attribute!r} is not a matchable worklist attribute") from None
    if key.attribute == PATIENT_NAME:
        return _name_condition(column, key, dialect)
    if key.attribute in MULTI_VALUED_ATTRIBUTES:
        return and_(column != "", _any_value_condition(column, key, dialect))
    return and_(column != "", _value_condition(column, key, dialect))


def _any_value_condition(
    column: InstrumentedAttribute[Any], key: KeyMatch, dialect: str
) -> ColumnElement[bool]:
    """Match one of the backslash-separated stored values (first, last, inner or only)."""
    if key.kind is MatchKind.RANGE:
        raise ValueError(f"{key.attribute!r} cannot be range-matched")
    sep = VALUE_SEPARATOR
    alternatives = []
    for value in key.values:
        tokens = _tokens(value, wildcards=key.kind is MatchKind.WILDCARD)
        alternatives += [
            _pattern_condition(column, tokens, dialect),
            _pattern_condition(column, [*tokens, sep, _ANY], dialect),
            _pattern_condition(column, [_ANY, sep, *tokens], dialect),
            _pattern_condition(column, [_ANY, sep, *tokens, sep, _ANY], dialect),
        ]
    return or_(*alternatives) if alternatives else false()


def _value_condition(
    column: InstrumentedAttribute[Any], key: KeyMatch, dialect: str
) -> ColumnElement[bool]:
    if key.kind is MatchKind.SINGLE:
        return column == key.values[0]
    if key.kind is MatchKind.UID_LIST:
        return column.in_(key.values) if key.values else false()
    if key.kind is MatchKind.WILDCARD:
        return _pattern_condition(column, _tokens(key.values[0]), dialect)
    bounds: list[ColumnElement[bool]] = []
    if key.low is not None:
        bounds.append(column >= key.low)
    if key.high is not None:
        bounds.append(column <= key.high)
    return and_(*bounds) if bounds else true()


# Pattern tokens: a literal character, ANY (any run) or ONE (one character).
_ANY = object()
_ONE = object()
Token = str | object


def _tokens(value: str, wildcards: bool = True) -> list[Token]:
    if not wildcards:
        return list(value)
    return [_ANY if ch == "*" else _ONE if ch == "?" else ch for ch in value]


def _pattern_condition(
    column: InstrumentedAttribute[Any], tokens: Sequence[Token], dialect: str
) -> ColumnElement[bool]:
    if not any(t is _ANY or t is _ONE for t in tokens):
        return column == "".join(str(t) for t in tokens)
    if dialect == "sqlite":
        return column.op("GLOB")(_glob(tokens))
    return column.like(_like(tokens), escape=LIKE_ESCAPE)


def _like(tokens: Iterable[Token]) -> str:
    out = []
    for t in tokens:
        if t is _ANY:
            out.append("%")
        elif t is _ONE:
            out.append("_")
        elif t in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + str(t))
        else:
            out.append(str(t))
    return "".join(out)


def _glob(tokens: Iterable[Token]) -> str:
    # GLOB has no escape character: a literal *, ? or [ is written as a one-character class.
    out = []
    for t in tokens:
        if t is _ANY:
            out.append("*")
        elif t is _ONE:
            out.append("?")
        elif t in ("*", "?", "["):
            out.append(f"[{t}]")
        else:
            out.append(str(t))
    return "".join(out)


def _name_condition(
    column: InstrumentedAttribute[Any], key: KeyMatch, dialect: str
) -> ColumnElement[bool]:
    values: Sequence[str]
    if key.kind is MatchKind.RANGE:
        raise ValueError("Patient's Name cannot be range-matched")
    values = key.values
    alternatives = [
        _one_name_condition(column, value, key.kind is MatchKind.WILDCARD, dialect)
        for value in values
    ]
    return and_(column != "", or_(*alternatives))


def _one_name_condition(
    column: InstrumentedAttribute[Any], value: str, wildcards: bool, dialect: str
) -> ColumnElement[bool]:
    folded = name_search_key(value).split("=")[0]
    tokens: list[Token] = []
    for index, component in enumerate(folded.split("^")):
        if index:
            tokens.append("^")
        # An empty component names nothing: it matches whatever the stored one holds.
        tokens.extend(_tokens(component, wildcards) if component else [_ANY])
    if not folded:
        tokens = [_ANY]
    # The stored name may have more components (^...) or further groups (=...).
    return or_(
        _pattern_condition(column, tokens, dialect),
        _pattern_condition(column, [*tokens, "^", _ANY], dialect),
        _pattern_condition(column, [*tokens, "=", _ANY], dialect),
    )


# WorklistItem fields stored as they are in one column (mwl.worklist.fields: the text
# kinds), then the ones _item_from_row converts from their columns (codes, start, status).
_STORED_FIELDS: dict[str, InstrumentedAttribute[Any]] = {
    field.name: field.columns[0] for field in FIELDS if field.kind in TEXT_KINDS
}
_CONVERTED_FIELDS = tuple(field for field in FIELDS if field.kind not in TEXT_KINDS)
# The stored fields first, in _STORED_FIELDS order, then the converted ones' columns,
# then the step's key.
_ITEM_COLUMNS = (
    *(column.label(name) for name, column in _STORED_FIELDS.items()),
    *(column for field in _CONVERTED_FIELDS for column in field.columns),
    ScheduledProcedureStep.id,
)
_STORED_COUNT = len(_STORED_FIELDS)


def _converters() -> tuple[tuple[str, slice, Callable[..., Any]], ...]:
    """(field name, its columns in an _ITEM_COLUMNS row, its conversion) per converted field."""
    converters = []
    offset = _STORED_COUNT
    for field in _CONVERTED_FIELDS:
        width = len(field.columns)
        converters.append((field.name, slice(offset, offset + width), field.reader))
        offset += width
    return tuple(converters)


_CONVERTERS = _converters()


def _item_from_row(row: Sequence[Any]) -> WorklistItem:
    """A WorklistItem from one row of :data:`_ITEM_COLUMNS` (as :func:`worklist_item`).

    By position, not by name: a large answer converts thousands of rows.
    """
    values = dict(zip(_STORED_FIELDS, row[:_STORED_COUNT], strict=True))
    for name, columns, convert in _CONVERTERS:
        values[name] = convert(*row[columns])
    return WorklistItem(**values, step_key=row[-1])


def worklist_item(
    step: ScheduledProcedureStep, procedure: RequestedProcedure, patient: Patient
) -> WorklistItem:
    """Copy one step with its procedure and patient rows into a detached WorklistItem."""
    rows: dict[type[Any], Any] = {
        ScheduledProcedureStep: step,
        RequestedProcedure: procedure,
        Patient: patient,
    }
    values = {field.name: field.read_row(rows[field.model]) for field in FIELDS}
    return WorklistItem(**values, step_key=step.id)
