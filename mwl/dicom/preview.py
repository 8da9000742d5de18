"""Test as a scanner: run a calling AE's worklist query as the SCP would, and explain misses.

The preview runs the C-FIND pipeline of the SCP (:mod:`mwl.dicom.find`): the
calling-AE check, the profile, the translation of the Identifier, the worklist
query and the response builder, so what the admin page shows is what the modality
gets. Explanations judge each condition of the effective query
with the worklist's own SQL (:func:`mwl.worklist.matching.build_statement`), one condition
at a time and restricted to one step, so their semantics cannot drift from the
real matching. Nothing here writes to the database or to the query log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.status import Status
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings, current_settings
from mwl.config import Settings
from mwl.dicom import keys as keytable
from mwl.dicom.find import (
    FAILURE_IDENTIFIER_DOES_NOT_MATCH,
    FindFailure,
    FindPlan,
    caller_refusal,
    find_matches,
    translate_query,
)
from mwl.dicom.keys import START, Level
from mwl.dicom.profiles import find_profile, profile_for
from mwl.dicom.query import ParsedIdentifier
from mwl.dicom.stored_identifier import (
    UndecodableIdentifierError,
    identifier_with_keys,
    read_identifier,
)
from mwl.domain import (
    HIDDEN_BY_DEFAULT,
    KeyMatch,
    MatchKind,
    SpsStatus,
    WorklistItem,
    WorklistQuery,
)
from mwl.store.models import ScheduledProcedureStep
from mwl.worklist.matching import START_TIME, STATUS, build_statement, worklist_item

SUCCESS = int(Status.SUCCESS)

# Pseudo-keywords for conditions that are not one key of the Identifier.
#: SPS Start Date and Time matched together as one date-time range (PS3.4 Table K.6-1).
SPS_START = "ScheduledProcedureStepStartDateTime"
#: The step statuses shown (asked for, set by the profile, or all but the hidden ones).
STATUS_FILTER = "ScheduledProcedureStepStatus"
#: The most matches the AE gets (profile or ``dicom_max_matches``).
MAX_MATCHES = "MaxMatches"
#: Whether the calling AE may query at all (``dicom_restrict_calling_ae``).
CALLING_AE = "CallingAETitle"
#: The Identifier itself, when it cannot be translated.
IDENTIFIER = "Identifier"

# Where a condition comes from.
FROM_QUERY = "query"
FROM_PROFILE = "profile"
FROM_DEFAULT = "default"

# Kinds of condition (how ``asked`` reads).
SINGLE = "single"  # equal to the value
WILDCARD = "wildcard"  # matches the pattern (* and ?)
LIST = "list"  # one of the values
RANGE = "range"  # between two bounds, "" for an open end
HIDDEN = "hidden"  # any status except the listed ones
LIMIT = "limit"  # at most this many
ALLOWED = "allowed"  # the calling AE is allowed (from the host)
IGNORED = "ignored"  # a key with a value the broker does not match on
INVALID = "invalid"  # the Identifier was refused (the comment is in ``asked``)

_ALL_STATUSES = frozenset(SpsStatus)
# WorklistItem attribute -> the keyword that matches it (and its VR, for display).
_KEYWORDS: dict[str, tuple[str, str]] = {
    spec.attribute: (spec.keyword, spec.vr)
    for spec in keytable.KEYS
    if spec.attribute and spec.attribute != START and spec.matching and spec.level != Level.CODE
}
_KEYWORDS[START_TIME] = ("ScheduledProcedureStepStartTime", "TM")
_KEYWORDS[STATUS] = ("ScheduledProcedureStepStatus", "CS")
# What pydicom and json raise on a stored identifier they cannot read.
_TEXT_SEPARATOR = ", "
_ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO, as handle_find sends it


@dataclass(frozen=True)
class QueryCondition:
    """One condition of the effective query, in plain terms.

    Attributes
    ----------
    keyword
        The DICOM keyword of the key, or one of :data:`SPS_START`,
        :data:`STATUS_FILTER`, :data:`MAX_MATCHES`, :data:`CALLING_AE`,
        :data:`IDENTIFIER`.
    kind
        How ``asked`` reads: :data:`SINGLE`, :data:`WILDCARD`, :data:`LIST`,
        :data:`RANGE`, :data:`HIDDEN`, :data:`LIMIT`, :data:`ALLOWED`,
        :data:`IGNORED` or :data:`INVALID`.
    asked
        The values asked, for people: dates ``YYYY-MM-DD``, lists joined by
        ``", "``; for :data:`RANGE` see ``low`` and ``high``.
    source
        :data:`FROM_QUERY` (the Identifier), :data:`FROM_PROFILE` (the AE's
        profile added it) or :data:`FROM_DEFAULT` (the broker's default).
    low, high
        The bounds of a :data:`RANGE`; ``""`` for an open end.
    reason
        For :data:`IGNORED`: why (one of the ``mwl.dicom.query`` reasons);
        ``allowed`` the enumerated values when the value was not one of them.
    """

    keyword: str
    kind: str
    asked: str
    source: str = FROM_QUERY
    low: str = ""
    high: str = ""
    reason: str = ""
    allowed: str = ""


@dataclass(frozen=True)
class KeyVerdict:
    """One condition judged against one stored step.

    Attributes
    ----------
    condition
        The condition (what the query asked).
    held
        What the step holds for it, for people (``""`` when empty).
    passed
        Whether the step meets the condition.
    """

    condition: QueryCondition
    held: str
    passed: bool

    @property
    def keyword(self) -> str:
        """The condition's keyword (see :class:`QueryCondition`)."""
        return self.condition.keyword


@dataclass(frozen=True)
class PreviewItem:
    """One match as the modality would get it.

    Attributes
    ----------
    item
        The worklist item (its ``step_key`` links to the stored step).
    response
        The response Identifier as rows ``(keyword, value)``; items of a sequence
        are written ``Sequence > Keyword``, code items as ``meaning (value, scheme)``.
    """

    item: WorklistItem
    response: tuple[tuple[str, str], ...]

    @property
    def step_key(self) -> int:
        """Database key of the scheduled procedure step."""
        return self.item.step_key


@dataclass(frozen=True)
class QueryPreview:
    """What one C-FIND from a calling AE would get.

    Attributes
    ----------
    calling_ae_title, peer_host
        Who asks (the host decides host-bound profiles).
    status
        The final C-FIND status the modality would get: Success (0x0000), a
        failure such as 0xA900, Refused 0x0124; ``None`` when the association
        itself would be rejected (an AE title not listed while
        ``dicom_restrict_calling_ae`` is on).
    error_comment
        Error Comment (0000,0902) as sent with a failure (at most 64 characters).
    reason
        The whole reason of a failure (the comment may be cut short).
    offending_keyword
        The key named in Offending Element (0000,0901), if any.
    items
        The matches, in the order they are sent.
    conditions
        The effective query in words: the keys asked, what the profile added,
        the status filter, the match limit, the keys ignored.
    truncated
        More steps match than the limit lets through.
    charset
        Specific Character Set of the responses.
    profile_known
        Whether a configured profile applies to this AE (and host).
    """

    calling_ae_title: str
    peer_host: str
    status: int | None
    error_comment: str = ""
    reason: str = ""
    offending_keyword: str = ""
    items: tuple[PreviewItem, ...] = ()
    conditions: tuple[QueryCondition, ...] = ()
    truncated: bool = False
    charset: str = ""
    profile_known: bool = False

    @property
    def succeeded(self) -> bool:
        """Whether the modality would get the matches (status Success)."""
        return self.status == SUCCESS


def _failed(
    preview: QueryPreview, status: int | None, reason: str, keyword: str = ""
) -> QueryPreview:
    return replace(
        preview,
        status=status,
        error_comment=reason[:_ERROR_COMMENT_LENGTH],
        reason=reason,
        offending_keyword=keyword,
    )


@dataclass(frozen=True)
class _Translated:
    plan: FindPlan
    conditions: tuple[QueryCondition, ...]

    @property
    def query(self) -> WorklistQuery:
        return self.plan.query


def _calling_condition(settings: Settings, calling: str, host: str) -> QueryCondition | None:
    if not settings.dicom_restrict_calling_ae:
        return None
    asked = f"{calling} ({host})" if host else calling
    return QueryCondition(CALLING_AE, ALLOWED, asked, FROM_PROFILE)


def _translate(
    settings: Settings,
    calling: str,
    host: str,
    ds: Dataset,
    today: Callable[[], dt.date] | None,
) -> _Translated | FindFailure:
    # The SCP's translation, with the same limit and the same clock.
    plan = translate_query(settings, calling, host, ds, today)
    if isinstance(plan, FindFailure):
        return plan
    return _Translated(plan, _conditions(settings, calling, host, plan.parsed, plan.query))


def _conditions(
    settings: Settings, calling: str, host: str, parsed: ParsedIdentifier, query: WorklistQuery
) -> tuple[QueryCondition, ...]:
    asked_keys = set(parsed.query.keys)
    out: list[QueryCondition] = []
    for key in query.keys:
        out.append(_key_condition(key, FROM_QUERY if key in asked_keys else FROM_PROFILE))
    window = _window_condition(parsed.query, query)
    if window is not None:
        out.append(window)
    status = _status_condition(parsed.query, query)
    if status is not None:
        out.append(status)
    if query.limit is not None:
        configured = find_profile(settings, calling, host)
        source = FROM_PROFILE if configured is not None and configured.max_matches else FROM_DEFAULT
        out.append(QueryCondition(MAX_MATCHES, LIMIT, str(query.limit), source))
    for ignored in parsed.ignored:
        out.append(
            QueryCondition(
                ignored.keyword,
                IGNORED,
                _TEXT_SEPARATOR.join(ignored.values),
                FROM_QUERY,
                reason=ignored.reason,
                allowed=_TEXT_SEPARATOR.join(ignored.allowed),
            )
        )
    return tuple(out)


def _key_condition(key: KeyMatch, source: str) -> QueryCondition:
    keyword, vr = _KEYWORDS.get(key.attribute, (key.attribute, ""))
    if key.kind is MatchKind.RANGE:
        low, high = _shown(key.low or "", vr), _shown(key.high or "", vr)
        return QueryCondition(keyword, RANGE, f"{low} - {high}", source, low, high)
    shown = [_shown(v, vr) for v in key.values]
    if key.kind is MatchKind.UID_LIST:
        return QueryCondition(keyword, LIST, _TEXT_SEPARATOR.join(shown), source)
    kind = WILDCARD if key.kind is MatchKind.WILDCARD else SINGLE
    return QueryCondition(keyword, kind, shown[0] if shown else "", source)


def _shown(value: str, vr: str) -> str:
    """A DA or TM value as people write it; other values unchanged."""
    if vr == "DA" and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    if vr == "TM" and len(value) >= 4 and value[:6].isdigit():
        return ":".join(value[i : i + 2] for i in range(0, min(len(value), 6), 2))
    return value


def _moment(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M")


def _window_condition(asked: WorklistQuery, query: WorklistQuery) -> QueryCondition | None:
    if query.start_from is None and query.start_until is None:
        return None
    source = FROM_QUERY
    if asked.start_from is None and asked.start_until is None:
        source = FROM_PROFILE  # the profile's date window
    low, high = _moment(query.start_from), _moment(query.start_until)
    return QueryCondition(SPS_START, RANGE, f"{low} - {high}", source, low, high)


def _status_condition(asked: WorklistQuery, query: WorklistQuery) -> QueryCondition | None:
    if any(key.attribute == STATUS for key in query.keys):
        return None  # a status key of its own, listed with the keys
    if query.statuses:
        source = FROM_QUERY if asked.statuses else FROM_PROFILE
        return QueryCondition(
            STATUS_FILTER, LIST, _TEXT_SEPARATOR.join(sorted(query.statuses)), source
        )
    return QueryCondition(
        STATUS_FILTER, HIDDEN, _TEXT_SEPARATOR.join(sorted(HIDDEN_BY_DEFAULT)), FROM_DEFAULT
    )


def preview_query(
    settings: Settings,
    session_factory: sessionmaker[Session],
    calling_ae_title: str,
    identifier: Dataset | str,
    *,
    peer_host: str = "",
    today: Callable[[], dt.date] | None = None,
) -> QueryPreview:
    """What a C-FIND with ``identifier`` from ``calling_ae_title`` would get now.

    Parameters
    ----------
    settings
        The broker's settings (the AE profiles and worklist policy).
    session_factory
        Read sessions on the worklist database; nothing is written.
    calling_ae_title
        The AE title the modality calls with.
    identifier
        The request Identifier: a ``Dataset``, or DICOM JSON as the query log
        stores it (:attr:`mwl.store.models.QueryLogEntry.identifier_json`).
    peer_host
        The modality's IP address, for profiles bound to a host.
    today
        The site's date, for a profile's date window (as the SCP: today in ``timezone``).

    Returns
    -------
    QueryPreview
        The matches and responses, or the failure status and comment.
    """
    calling = calling_ae_title.strip()
    profile = profile_for(settings, calling, peer_host)
    base = QueryPreview(
        calling, peer_host, SUCCESS, charset=profile.charset, profile_known=profile.known
    )
    refusal = caller_refusal(settings, calling, peer_host)
    if refusal is not None:
        # No comment when the association itself is rejected: there is no C-FIND.
        return _failed(base, refusal.status, refusal.comment if refusal.status else "")
    try:
        ds = read_identifier(identifier)
    except UndecodableIdentifierError:
        return _failed(base, FAILURE_IDENTIFIER_DOES_NOT_MATCH, "the Identifier cannot be decoded")
    translated = _translate(settings, calling, peer_host, ds, today)
    if isinstance(translated, FindFailure):
        return _failed(base, translated.status, translated.comment, translated.offending_keyword)
    query = translated.query
    # One more than the limit tells whether it cut the answer; the order is total
    # (start, SPS ID, key), so the first ``limit`` rows are those the SCP sends.
    probe = query if query.limit is None else replace(query, limit=query.limit + 1)
    found = find_matches(session_factory, probe)
    if isinstance(found, FindFailure):
        failed = _failed(base, found.status, found.comment)
        return replace(failed, conditions=translated.conditions)
    truncated = query.limit is not None and len(found) > query.limit
    if query.limit is not None:
        found = found[: query.limit]
    builder = translated.plan.builder
    items = tuple(
        PreviewItem(stored.item, response_rows(builder.build(stored.item))) for stored in found
    )
    return replace(base, items=items, conditions=translated.conditions, truncated=truncated)


def response_rows(response: Dataset, prefix: str = "") -> tuple[tuple[str, str], ...]:
    """A response Identifier as ``(keyword, value)`` rows for people."""
    rows: list[tuple[str, str]] = []
    for elem in response:
        keyword = elem.keyword or str(elem.tag)
        if elem.VR != "SQ":
            rows.append((prefix + keyword, _text(elem.value)))
            continue
        items = list(elem.value or ())
        if keyword in keytable.CODE_SEQUENCES:
            rows.append((prefix + keyword, "; ".join(_code_text(item) for item in items)))
            continue
        for item in items:
            rows.extend(response_rows(item, f"{prefix}{keyword} > "))
        if not items:
            rows.append((prefix + keyword, ""))
    return tuple(rows)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _code_text(item: Dataset) -> str:
    value = _text(item.get("CodeValue", ""))
    scheme = _text(item.get("CodingSchemeDesignator", ""))
    meaning = _text(item.get("CodeMeaning", ""))
    code = ", ".join(p for p in (value, scheme) if p)
    if meaning and code:
        return f"{meaning} ({code})"
    return meaning or code


@dataclass(frozen=True)
class Explanation:
    """One stored step and each condition of a query judged on it.

    Attributes
    ----------
    item
        The step (whatever its status).
    verdicts
        The conditions the step fails first, then those it passes, each group in
        query order (see :func:`explain_exclusion`).
    """

    item: WorklistItem
    verdicts: tuple[KeyVerdict, ...]

    @property
    def failed(self) -> tuple[KeyVerdict, ...]:
        """The conditions that leave the step out (none: the AE gets it)."""
        return tuple(v for v in self.verdicts if not v.passed)


def explain_exclusion(
    settings: Settings,
    session_factory: sessionmaker[Session],
    calling_ae_title: str,
    identifier: Dataset | str,
    sps_key: int,
    *,
    peer_host: str = "",
    today: Callable[[], dt.date] | None = None,
) -> list[KeyVerdict] | None:
    """Judge each condition of the AE's query against one stored step.

    Each key of the effective query, the SPS start window, the status filter and
    the match limit are checked by running the worklist's own ``SELECT``
    (:func:`mwl.worklist.matching.build_statement`) with that condition alone, restricted
    to the step, so a verdict is what the real query decides for that condition.
    When ``dicom_restrict_calling_ae`` is on, whether the AE may query at all is
    the first condition.

    Parameters
    ----------
    settings, session_factory, calling_ae_title, identifier, peer_host, today
        As for :func:`preview_query`.
    sps_key
        Database key of the scheduled procedure step.

    Returns
    -------
    list of KeyVerdict or None
        The conditions the step fails first, then those it passes, each group in
        query order; when the Identifier cannot be translated, one failed verdict
        (:data:`INVALID`, on the offending key or :data:`IDENTIFIER`) with the
        reason as ``asked``; ``None`` when there is no such step.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The database failed.
    """
    explanation = explain_step(
        settings,
        session_factory,
        calling_ae_title,
        identifier,
        sps_key,
        peer_host=peer_host,
        today=today,
    )
    return None if explanation is None else list(explanation.verdicts)


def explain_step(
    settings: Settings,
    session_factory: sessionmaker[Session],
    calling_ae_title: str,
    identifier: Dataset | str,
    sps_key: int,
    *,
    peer_host: str = "",
    today: Callable[[], dt.date] | None = None,
) -> Explanation | None:
    """:func:`explain_exclusion` with the step itself (for a page that shows both)."""
    calling = calling_ae_title.strip()
    verdicts: list[KeyVerdict] = []
    allowed = _calling_condition(settings, calling, peer_host)
    if allowed is not None:
        refused = caller_refusal(settings, calling, peer_host) is not None
        allowed_aes = _TEXT_SEPARATOR.join(
            f"{p.ae_title} ({p.host})" if p.host else p.ae_title for p in settings.dicom_ae_profiles
        )
        verdicts.append(KeyVerdict(allowed, allowed_aes, not refused))
    with session_factory() as session:
        item = _step_item(session, sps_key)
        if item is None:
            return None
        try:
            translated = _translate(
                settings, calling, peer_host, read_identifier(identifier), today
            )
        except UndecodableIdentifierError as exc:
            translated = FindFailure(FAILURE_IDENTIFIER_DOES_NOT_MATCH, str(exc))
        if isinstance(translated, FindFailure):
            failed = QueryCondition(
                translated.offending_keyword or IDENTIFIER, INVALID, translated.comment
            )
            return Explanation(item, (*verdicts, KeyVerdict(failed, "", False)))
        verdicts.extend(_judge(session, translated, item))
    ordered = [v for v in verdicts if not v.passed] + [v for v in verdicts if v.passed]
    return Explanation(item, tuple(ordered))


def _step_item(session: Session, sps_key: int) -> WorklistItem | None:
    # Every status: the step is looked at, not matched.
    statement = build_statement(WorklistQuery(statuses=_ALL_STATUSES), _dialect(session))
    row = session.execute(statement.where(ScheduledProcedureStep.id == sps_key)).first()
    return None if row is None else worklist_item(*row)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _judge(session: Session, translated: _Translated, item: WorklistItem) -> list[KeyVerdict]:
    query = translated.query
    conditions = iter(translated.conditions)
    verdicts: list[KeyVerdict] = []
    for key in query.keys:
        alone = WorklistQuery(keys=(key,), statuses=_ALL_STATUSES)
        verdicts.append(
            KeyVerdict(next(conditions), _held(item, key.attribute), _passes(session, alone, item))
        )
    if query.start_from is not None or query.start_until is not None:
        window = WorklistQuery(
            start_from=query.start_from, start_until=query.start_until, statuses=_ALL_STATUSES
        )
        verdicts.append(
            KeyVerdict(next(conditions), _moment(item.start), _passes(session, window, item))
        )
    if not any(key.attribute == STATUS for key in query.keys):
        # Empty statuses: the worklist's default (all but the hidden ones).
        statuses = WorklistQuery(statuses=query.statuses)
        verdicts.append(
            KeyVerdict(
                next(conditions),
                item.scheduled_procedure_step_status.value,
                _passes(session, statuses, item),
            )
        )
    if query.limit is not None:
        condition = next(conditions)
        position = _position(session, query, item) if all(v.passed for v in verdicts) else None
        if position is None:
            # Not matched at all: the limit is not what leaves it out.
            verdicts.append(KeyVerdict(condition, "", True))
        else:
            verdicts.append(KeyVerdict(condition, str(position), position <= query.limit))
    return verdicts


def _passes(session: Session, query: WorklistQuery, item: WorklistItem) -> bool:
    statement = build_statement(query, _dialect(session))
    restricted = statement.where(ScheduledProcedureStep.id == item.step_key)
    return session.execute(restricted).first() is not None


def _position(session: Session, query: WorklistQuery, item: WorklistItem) -> int | None:
    """1-based place of the step in the unlimited answer, in the order it is sent."""
    statement = build_statement(replace(query, limit=None), _dialect(session))
    keys = session.scalars(statement.with_only_columns(ScheduledProcedureStep.id))
    for place, key in enumerate(keys, start=1):
        if key == item.step_key:
            return place
    return None


def _held(item: WorklistItem, attribute: str) -> str:
    if attribute == START_TIME:
        return item.start.strftime("%H:%M:%S")
    value = getattr(item, attribute, "")
    text = str(value.value if isinstance(value, SpsStatus) else value)
    vr = _KEYWORDS.get(attribute, ("", ""))[1]
    return _shown(text, vr)


class WorklistPreviewer:
    """The preview service the admin page borrows (``create_app(query_previewer=...)``).

    Parameters
    ----------
    settings
        The broker's settings as the SCP got them: a :class:`~mwl.admin.overrides.LiveSettings`
        when the SCP follows changes made on the admin page, so the preview does too.
    session_factory
        Read sessions on the worklist database.
    today
        The local date (a parameter so tests can fix it).
    """

    def __init__(
        self,
        settings: Settings | LiveSettings,
        session_factory: sessionmaker[Session],
        today: Callable[[], dt.date] | None = None,
    ) -> None:
        self._settings = settings
        self._session_factory = session_factory
        self._today = today

    def preview(self, calling_ae: str, identifier_json: str, peer_host: str = "") -> QueryPreview:
        """See :func:`preview_query`."""
        return preview_query(
            current_settings(self._settings),
            self._session_factory,
            calling_ae,
            identifier_json,
            peer_host=peer_host,
            today=self._today,
        )

    def explain(
        self, calling_ae: str, identifier_json: str, sps_key: int, peer_host: str = ""
    ) -> Explanation | None:
        """See :func:`explain_step`."""
        return explain_step(
            current_settings(self._settings),
            self._session_factory,
            calling_ae,
            identifier_json,
            sps_key,
            peer_host=peer_host,
            today=self._today,
        )

    def identifier_with_keys(self, identifier_json: str, keys: Mapping[str, str]) -> str:
        """See :func:`identifier_with_keys`; returns DICOM JSON."""
        result: str = identifier_with_keys(identifier_json or None, keys).to_json()
        return result


__all__ = [
    "CALLING_AE",
    "Explanation",
    "IDENTIFIER",
    "MAX_MATCHES",
    "SPS_START",
    "STATUS_FILTER",
    "KeyVerdict",
    "PreviewItem",
    "QueryCondition",
    "QueryPreview",
    "WorklistPreviewer",
    "explain_exclusion",
    "explain_step",
    "preview_query",
    "response_rows",
]
