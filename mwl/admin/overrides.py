"""Settings changed on the admin page: stored, validated, applied over file and environment."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import DicomAeProfile, Hl7StationRule, Settings, convert_setting
from mwl.domain import SpsStatus
from mwl.errors import SettingsError
from mwl.operations.audit import record_event
from mwl.orders.values import CHARSET_NAMES
from mwl.store.models import SettingOverride

logger = logging.getLogger(__name__)

#: Settings an admin may change on the page. The rest (ports, database URL, secrets,
#: the broker's AE title, ...) are read once at start: changing them needs a restart.
EDITABLE: tuple[str, ...] = (
    "dicom_ae_profiles",
    "dicom_restrict_calling_ae",
    "dicom_max_matches",
    "dicom_response_charset",
    "hl7_modality_map",
    "hl7_order_status",
    "hl7_station_rules",
    "hl7_station_from_orc18",
    "hl7_accepted_senders",
    "hl7_protocol_code_component",
    "hl7_missing_start",
    "watchdog_hours",
    "watchdog_hl7_silent_minutes",
    "watchdog_scanner_silent_minutes",
    "watchdog_scanner_failures",
    "watchdog_outbox_minutes",
    "watchdog_overdue_minutes",
    "watchdog_missing_station",
)

#: Specific Character Set defined terms the responses can be written in, with a name
#: a person recognises: the core's one table of them (:data:`mwl.orders.values.CHARSET_NAMES`).
RESPONSE_CHARSETS: Mapping[str, str] = CHARSET_NAMES

SOURCE_DEFAULT = "default"
SOURCE_FILE = "file"
SOURCE_PAGE = "page"


@dataclass(frozen=True)
class StoredOverride:
    """One row of ``setting_override``: the value as JSON, who stored it and when."""

    name: str
    value_json: str
    updated_at: dt.datetime
    updated_by: str


@dataclass(frozen=True)
class EffectiveSetting:
    """One setting as the overview shows it.

    Attributes
    ----------
    name
        The setting (field of :class:`~mwl.config.Settings`).
    value
        Its effective value in TOML form, secrets hidden.
    source
        :data:`SOURCE_DEFAULT`, :data:`SOURCE_FILE` (file, environment or command
        line) or :data:`SOURCE_PAGE`.
    editable
        Whether the admin page may change it (else it needs a restart).
    updated_by, updated_at
        Who changed it on the page and when (page values only).
    """

    name: str
    value: Any
    source: str
    editable: bool
    updated_by: str = ""
    updated_at: dt.datetime | None = None


# --------------------------------------------------------------------------- values


def _profile_plain(profile: DicomAeProfile) -> dict[str, Any]:
    values = dataclasses.asdict(profile)
    values["visible_statuses"] = list(profile.visible_statuses)
    values["match_keys"] = list(profile.match_keys)
    values["required_keys"] = list(profile.required_keys)
    values["max_length"] = dict(profile.max_length)
    return values


def _rule_plain(rule: Hl7StationRule) -> dict[str, Any]:
    return dataclasses.asdict(rule)


def to_plain(name: str, value: Any) -> Any:
    """A value of setting ``name`` in the form the TOML file takes (JSON-serialisable).

    The inverse of :func:`mwl.config.convert_setting`: ``convert_setting(name,
    to_plain(name, v)) == v``. The page shows, stores and audits values in this form.
    """
    if name == "dicom_ae_profiles":
        return [_profile_plain(p) for p in value]
    if name == "hl7_station_rules":
        return [_rule_plain(r) for r in value]
    if name == "hl7_order_status":
        return {f"{control}_{order_status}": status for control, order_status, status in value}
    if name in _TABLES:
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# Settings kept as tuples of pairs that the TOML file writes as a table.
_TABLES = frozenset(
    {"hl7_modality_map", "mpps_step_status", "retention_step_days", "retention_mpps_days"}
)


def plain_value(settings: Settings, name: str) -> Any:
    """Setting ``name`` of ``settings`` in TOML form (see :func:`to_plain`)."""
    return to_plain(name, getattr(settings, name))


def _check_ae_title(setting: str, title: str) -> None:
    # The rule of config's dicom_ae_title: what pynetdicom accepts as an AE title.
    if (
        not title.strip()
        or len(title) > 16
        or "\\" in title
        or not title.isascii()
        or (not title.isprintable())
    ):
        raise SettingsError(
            setting, f"{title!r} is not an AE title (1-16 printable ASCII characters)"
        )


def _check_charset(setting: str, charset: str) -> None:
    if charset and charset not in RESPONSE_CHARSETS:
        raise SettingsError(setting, f"{charset!r} is not a supported Specific Character Set")


def _check_profiles(profiles: tuple[DicomAeProfile, ...]) -> None:
    setting = "dicom_ae_profiles"
    seen: set[tuple[str, str]] = set()
    for profile in profiles:
        _check_ae_title(setting, profile.ae_title)
        if profile.host:
            try:
                ipaddress.ip_address(profile.host)
            except ValueError:
                # The peer is known by its address only; a host name would never match.
                raise SettingsError(
                    setting, f"{profile.host!r} ({profile.ae_title}) is not an IP address"
                ) from None
        _check_charset(setting, profile.response_charset)
        for status in profile.visible_statuses:
            if status not in SpsStatus.__members__:
                raise SettingsError(
                    setting, f"{status!r} is not a step status ({profile.ae_title})"
                )
        if profile.date_window_days < 0 or profile.max_matches < 0:
            raise SettingsError(
                setting, f"days and matches must not be negative ({profile.ae_title})"
            )
        key = (profile.ae_title.strip(), profile.host)
        if key in seen:
            raise SettingsError(setting, f"{profile.ae_title!r} is listed twice for one host")
        seen.add(key)


def _checked(name: str, value: Any) -> Any:
    """``value`` (TOML form) converted to setting ``name``, with the page's extra checks.

    The converters of :mod:`mwl.config` check form and type; these add what the
    DICOM and HL7 adapters would otherwise only find at start-up.
    """
    if name not in EDITABLE:
        raise SettingsError(name, "cannot be changed on the admin page (file or environment only)")
    converted = convert_setting(name, value)
    if name == "dicom_ae_profiles":
        _check_profiles(converted)
    elif name == "dicom_response_charset":
        if not converted:
            raise SettingsError(name, "must name a character set")
        _check_charset(name, converted)
    elif name == "hl7_station_rules":
        for rule in converted:
            _check_ae_title(name, rule.station_ae_title)
    elif name == "hl7_modality_map":
        if any(not sent for sent, _modality in converted):
            raise SettingsError(name, "a sent value must not be empty")
    return converted


def _canonical_json(name: str, converted: Any) -> str:
    return json.dumps(to_plain(name, converted), ensure_ascii=False)


# --------------------------------------------------------------------------- storage


def stored_overrides(session: Session) -> dict[str, StoredOverride]:
    """Every setting stored on the page, by name, with who changed it and when."""
    rows = session.scalars(select(SettingOverride).order_by(SettingOverride.name))
    return {
        row.name: StoredOverride(row.name, row.value_json, row.updated_at, row.updated_by)
        for row in rows
    }


def load_overrides(session: Session) -> dict[str, str]:
    """The settings stored on the page: name -> value as JSON (TOML form)."""
    rows = session.execute(select(SettingOverride.name, SettingOverride.value_json))
    return {name: value_json for name, value_json in rows}


def apply_overrides(base: Settings, overrides: Mapping[str, str]) -> Settings:
    """``base`` (defaults < file < environment) with the page's values on top.

    Parameters
    ----------
    base
        The settings read at start.
    overrides
        Name -> value as JSON, as :func:`load_overrides` returns them.

    Returns
    -------
    Settings
        Validated as a whole, like the settings read at start.

    Raises
    ------
    SettingsError
        Naming the setting whose stored value is not (or no longer) valid, or the
        one a combination of values breaks.
    """
    changes: dict[str, Any] = {}
    for name, value_json in overrides.items():
        try:
            value = json.loads(value_json)
        except ValueError:
            raise SettingsError(name, "the stored value is not JSON") from None
        changes[name] = _checked(name, value)
    if not changes:
        return base
    return base.replace(**changes)


def _write(
    session: Session,
    base: Settings,
    values: Mapping[str, Any | None],
    username: str,
) -> list[str]:
    """Store (value) or remove (None) page values after validating the outcome whole."""
    rows = {row.name: row for row in session.scalars(select(SettingOverride))}
    current = {name: row.value_json for name, row in rows.items()}
    try:
        before = apply_overrides(base, current)
    except SettingsError:
        # A stored value that became invalid must not block repairing it.
        before = base
    wanted = dict(current)
    for name, value in values.items():
        if value is None:
            if name not in EDITABLE:
                raise SettingsError(name, "cannot be changed on the admin page")
            wanted.pop(name, None)
        else:
            value_json = _canonical_json(name, _checked(name, value))
            if value_json == _canonical_json(name, getattr(before, name)):
                # Unchanged (a form posts every field): no page value, no audit event.
                continue
            wanted[name] = value_json
    after = apply_overrides(base, wanted)
    changed = []
    for name in values:
        if wanted.get(name) == current.get(name):
            continue
        changed.append(name)
        if name in wanted:
            row = rows.get(name)
            if row is None:
                session.add(
                    SettingOverride(name=name, value_json=wanted[name], updated_by=username)
                )
            else:
                row.value_json = wanted[name]
                row.updated_by = username
        else:
            session.delete(rows[name])
        record_event(
            session,
            username,
            "settings",
            subject=name,
            changes={name: (plain_value(before, name), plain_value(after, name))},
            reason="" if name in wanted else "reset to the file/environment value",
        )
    if changed:
        session.flush()
        logger.info("settings changed on the admin page by %s: %s", username, ", ".join(changed))
    return changed


def set_overrides(
    session: Session, base: Settings, values: Mapping[str, Any], username: str
) -> list[str]:
    """Store page values for several settings at once (all or none); the caller commits.

    Each value is in TOML form (a table, a list of tables, a number, text); text is
    accepted for numbers and switches as in ``MWL_*`` variables. The settings that
    result are validated whole before anything is stored, so a pair that only works
    together (the calling-AE restriction and its first profile) can be set in one go.
    A value equal to the current one is left alone. Each change is audited (action
    ``settings``, subject the setting, its value before and after).

    Parameters
    ----------
    session
        The writer unit of work.
    base
        The settings read at start (defaults < file < environment).
    values
        Setting name -> new value.
    username
        Who made the change.

    Returns
    -------
    list of str
        The settings whose value changed.

    Raises
    ------
    SettingsError
        Naming the first bad setting; nothing is stored.
    """
    return _write(session, base, values, username)


def set_override(session: Session, name: str, value: Any, username: str, *, base: Settings) -> bool:
    """Store a page value for one setting (see :func:`set_overrides`); the caller commits.

    Returns
    -------
    bool
        Whether the value changed.

    Raises
    ------
    SettingsError
        Naming the setting; nothing is stored.
    """
    return bool(_write(session, base, {name: value}, username))


def clear_override(session: Session, name: str, username: str, *, base: Settings) -> bool:
    """Drop the page value of ``name``: the file or environment value applies again.

    Validated like a change (clearing the profiles while the page keeps the
    calling-AE restriction on is refused) and audited; the caller commits.

    Returns
    -------
    bool
        Whether there was a page value to drop.

    Raises
    ------
    SettingsError
        The setting is not one the page manages, or the outcome would be invalid.
    """
    return bool(_write(session, base, {name: None}, username))


@functools.cache
def _defaults() -> Settings:
    return Settings()


def describe_settings(
    base: Settings, effective: Settings, stored: Mapping[str, StoredOverride]
) -> list[EffectiveSetting]:
    """Every setting with its effective value (secrets hidden) and where it comes from.

    Parameters
    ----------
    base
        The settings read at start.
    effective
        ``base`` with the page values applied (:func:`apply_overrides`).
    stored
        The page values (:func:`stored_overrides`); a name listed here is shown as
        coming from the page.
    """
    redacted = effective.redacted()
    defaults = _defaults()
    rows = []
    for field in dataclasses.fields(Settings):
        name = field.name
        value = (
            redacted[name]
            if name in ("web_secret_key", "database_url")
            else (plain_value(effective, name))
        )
        found = stored.get(name)
        if found is not None:
            rows.append(
                EffectiveSetting(
                    name, value, SOURCE_PAGE, name in EDITABLE, found.updated_by, found.updated_at
                )
            )
            continue
        source = SOURCE_DEFAULT if getattr(base, name) == getattr(defaults, name) else SOURCE_FILE
        rows.append(EffectiveSetting(name, value, source, name in EDITABLE))
    return rows


# --------------------------------------------------------------------------- live


class LiveSettings:
    """The effective settings of a running service, following changes made on the page.

    :meth:`current` re-reads the page values at most every ``refresh_seconds``
    and rebuilds the settings only when they changed, so the next association or
    HL7 message uses a change without a restart. When the database cannot be read,
    or a stored value is not valid, the last good settings stay in force (logged at
    WARNING once, until it works again). Safe to share between threads.

    Parameters
    ----------
    base
        The settings read at start (defaults < file < environment).
    session_factory
        A reader session factory (not a writer: on SQLite a writer session takes the
        write lock).
    refresh_seconds
        How old the settings may get; 0 reads the table on every call.
    clock
        Monotonic seconds (a parameter so tests can drive it).
    """

    def __init__(
        self,
        base: Settings,
        session_factory: sessionmaker[Session],
        refresh_seconds: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base
        self._sessions = session_factory
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._current = base
        self._applied: dict[str, str] = {}
        self._checked_at: float | None = None
        self._failing = False

    @property
    def base(self) -> Settings:
        """The settings read at start, without page values."""
        return self._base

    def current(self) -> Settings:
        """The effective settings: at most ``refresh_seconds`` old."""
        checked_at = self._checked_at
        if checked_at is not None and self._clock() - checked_at < self._refresh_seconds:
            return self._current
        # Only one thread reads the table; the others go on with the last settings
        # rather than queue behind it (the first call waits: there is nothing older).
        if not self._lock.acquire(blocking=checked_at is None):
            return self._current
        try:
            checked_at = self._checked_at
            if checked_at is None or self._clock() - checked_at >= self._refresh_seconds:
                self._reload()
            return self._current
        finally:
            self._lock.release()

    def refresh(self) -> Settings:
        """Read the page values now, whatever their age; return the effective settings."""
        with self._lock:
            self._reload()
            return self._current

    def _reload(self) -> None:
        try:
            self._load()
        finally:
            # Set last: a thread that finds it set also finds the settings it stands for.
            self._checked_at = self._clock()

    def _load(self) -> None:
        try:
            with self._sessions() as session:
                overrides = load_overrides(session)
        except SQLAlchemyError as exc:
            self._warn(
                "page settings cannot be read (%s); the last good settings stay in force",
                type(exc).__name__,
            )
            return
        if overrides == self._applied:
            self._recovered()
            return
        try:
            settings = apply_overrides(self._base, overrides)
        except SettingsError as exc:
            self._warn("page settings not applied, the last good ones stay in force: %s", exc)
            return
        changed = sorted(
            name
            for name in set(overrides) | set(self._applied)
            if overrides.get(name) != self._applied.get(name)
        )
        self._current = settings
        self._applied = overrides
        self._recovered()
        logger.info("page settings in force: %s", ", ".join(changed))

    def _warn(self, message: str, *args: object) -> None:
        if not self._failing:
            logger.warning(message, *args)
            self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logger.info("page settings read again")
            self._failing = False


def current_settings(source: Settings | LiveSettings) -> Settings:
    """``source`` itself, or the current effective settings of a :class:`LiveSettings`."""
    return source.current() if isinstance(source, LiveSettings) else source
