"""Per-calling-AE worklist policy: charset, station coercion, date window, statuses, limit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace

from pydicom.charset import python_encoding

from mwl.config import DicomAeProfile, Settings
from mwl.dicom.keys import MATCHED_ON_REQUEST
from mwl.domain import KeyMatch, MatchKind, SpsStatus, WorklistQuery
from mwl.errors import SettingsError
from mwl.worklist.matching import START_TIME, STATUS

_STATION = "scheduled_station_ae_title"


@dataclass(frozen=True)
class AeProfile:
    """The effective policy for one association's caller.

    Attributes
    ----------
    charset
        Specific Character Set defined term of the responses.
    calling_ae_as_station
        Add Scheduled Station AE Title = calling AE when the query names none
        (dcm4chee's ``dcmCallingAETAsScheduledStationAET``).
    date_window_days
        When the query has no SPS Start Date/Time, match today and the next
        ``date_window_days - 1`` days; 0 leaves the query as asked.
    visible_statuses
        Step statuses shown when the query names none; empty: all but
        :data:`~mwl.domain.HIDDEN_BY_DEFAULT`.
    max_matches
        Limit on the matches returned, or ``None``.
    known
        Whether the caller matched a configured profile.
    match_keys
        Keys matched only on request (:data:`mwl.dicom.keys.MATCHED_ON_REQUEST`)
        that this caller's queries are matched on.
    warn_ignored_keys
        Whether ignored keys make the pending status 0xFF01 (else 0xFF00).
    timezone_offset
        Whether the responses carry Timezone Offset From UTC (0008,0201).
    """

    charset: str
    calling_ae_as_station: bool = False
    date_window_days: int = 0
    visible_statuses: frozenset[SpsStatus] = frozenset()
    max_matches: int | None = None
    known: bool = False
    match_keys: frozenset[str] = frozenset()
    warn_ignored_keys: bool = True
    timezone_offset: bool = False

    def apply(
        self,
        query: WorklistQuery,
        calling_ae_title: str,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> WorklistQuery:
        """Return ``query`` with this profile's defaults filled in where it left them open.

        Parameters
        ----------
        query
            As translated from the Identifier.
        calling_ae_title
            The association's calling AE title.
        today
            The local date (a parameter so tests can fix it).
        """
        keys = query.keys
        attributes = {key.attribute for key in keys}
        if self.calling_ae_as_station and _STATION not in attributes:
            keys = (*keys, KeyMatch(_STATION, MatchKind.SINGLE, (calling_ae_title,)))
        start_from, start_until = query.start_from, query.start_until
        no_start = start_from is None and start_until is None and START_TIME not in attributes
        if self.date_window_days and no_start:
            first = today()
            last = first + dt.timedelta(days=self.date_window_days - 1)
            start_from = dt.datetime.combine(first, dt.time.min)
            start_until = dt.datetime.combine(last, dt.time.max)
        statuses = query.statuses
        if not statuses and STATUS not in attributes and self.visible_statuses:
            statuses = self.visible_statuses
        return replace(
            query,
            keys=keys,
            start_from=start_from,
            start_until=start_until,
            statuses=statuses,
            limit=query.limit if query.limit is not None else self.max_matches,
        )


def check_charset(charset: str, setting: str) -> None:
    """Raise :class:`SettingsError` unless ``charset`` is one the responses can be written in."""
    if charset in ("", "ISO_IR 6", "ISO_IR 192"):
        return
    if charset not in python_encoding or charset.startswith("ISO 2022"):
        raise SettingsError(
            setting, f"{charset!r} is not a supported single-byte Specific Character Set"
        )


def check_profiles(settings: Settings) -> None:
    """Validate the DICOM settings pydicom must judge (character sets, statuses).

    Raises
    ------
    SettingsError
        Naming the setting.
    """
    check_charset(settings.dicom_response_charset, "dicom_response_charset")
    for profile in settings.dicom_ae_profiles:
        check_charset(profile.response_charset, "dicom_ae_profiles")
        for keyword in profile.match_keys:
            if keyword not in MATCHED_ON_REQUEST:
                raise SettingsError(
                    "dicom_ae_profiles",
                    f"{keyword!r} is not a key matched on request ({profile.ae_title});"
                    f" those are {', '.join(sorted(MATCHED_ON_REQUEST))}",
                )
        for status in profile.visible_statuses:
            if status not in SpsStatus.__members__:
                raise SettingsError(
                    "dicom_ae_profiles", f"{status!r} is not a step status ({profile.ae_title})"
                )


def find_profile(settings: Settings, calling_ae_title: str, host: str) -> DicomAeProfile | None:
    """The configured profile for this caller: AE title and, when the profile names one, host."""
    for profile in settings.dicom_ae_profiles:
        if profile.ae_title == calling_ae_title.strip() and profile.host in ("", host):
            return profile
    return None


def profile_for(settings: Settings, calling_ae_title: str, host: str) -> AeProfile:
    """The effective :class:`AeProfile` of a caller (its configured profile or the defaults).

    Parameters
    ----------
    settings
        The broker's settings.
    calling_ae_title
        The association's calling AE title.
    host
        The peer's IP address.
    """
    default_limit = settings.dicom_max_matches or None
    configured = find_profile(settings, calling_ae_title, host)
    if configured is None:
        return AeProfile(charset=settings.dicom_response_charset, max_matches=default_limit)
    return AeProfile(
        charset=configured.response_charset or settings.dicom_response_charset,
        calling_ae_as_station=configured.calling_ae_as_station,
        date_window_days=configured.date_window_days,
        visible_statuses=frozenset(SpsStatus(s) for s in configured.visible_statuses),
        max_matches=configured.max_matches or default_limit,
        known=True,
        match_keys=frozenset(configured.match_keys),
        warn_ignored_keys=configured.warn_ignored_keys,
        timezone_offset=configured.timezone_offset,
    )
