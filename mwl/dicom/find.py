"""The one C-FIND pipeline: who asks, Identifier -> WorklistQuery -> SQL -> responses.

The worklist SCP (:func:`mwl.dicom.handlers.handle_find`) and "test as this
scanner" (:mod:`mwl.dicom.preview`) both go through these steps, so the admin
page shows what the modality gets:

1. :func:`caller_refusal`: may this calling AE ask, from this host?
2. :func:`plan_find`: the caller's profile, the Identifier translated and
   checked, the profile's defaults applied, the response builder.
3. :func:`find_matches`: the items, read in one unit of work that is closed
   before any response is written.

Statuses are those of the Modality Worklist SOP Class, PS3.4 K.4.1.1.4 Table
K.4-1 (the general C-FIND table is C.4.1.1.4); pynetdicom names only Success,
Pending and Cancel, the others are named here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.status import Status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.dicom.profiles import AeProfile, profile_for
from mwl.dicom.query import ParsedIdentifier, parse_identifier
from mwl.dicom.response import ResponseBuilder, ResponseTimes
from mwl.domain import WorklistQuery
from mwl.errors import InvalidQueryError
from mwl.timezones import site_today, site_zone
from mwl.worklist.matching import StoredItem, find_stored_items

SUCCESS = int(Status.SUCCESS)
PENDING = int(Status.PENDING)
CANCEL = int(Status.CANCEL)
#: Failure: Identifier does not match SOP Class (a malformed or impossible query).
FAILURE_IDENTIFIER_DOES_NOT_MATCH = 0xA900
#: Failure: Unable to process (0xC000-0xCFFF); used when the database fails.
FAILURE_UNABLE_TO_PROCESS = 0xC001
#: Pending: matches are continuing, one or more optional keys were not supported.
PENDING_OPTIONAL_KEYS_NOT_SUPPORTED = 0xFF01
#: Refused: Not Authorized (PS3.7 C.5.x general status): a listed AE from another host.
REFUSED_NOT_AUTHORIZED = 0x0124

ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO


@dataclass(frozen=True)
class FindFailure:
    """A C-FIND that ends with a failure status and no match.

    ``status`` is None when the association itself is rejected (the calling AE
    is not in the allow-list), so no C-FIND status exists; ``comment`` is the
    Error Comment sent, ``offending_keyword`` the key Offending Element names.
    """

    status: int | None
    comment: str
    offending_keyword: str = ""

    def status_dataset(self) -> Dataset:
        """The failure as a status Dataset: Error Comment, Offending Element (PS3.7 C.4.2.1.4)."""
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment[:ERROR_COMMENT_LENGTH]
        tag = tag_for_keyword(self.offending_keyword) if self.offending_keyword else None
        if tag is not None:
            ds.OffendingElement = [tag]
        return ds


def allowed_calling_aets(settings: Settings) -> frozenset[str]:
    """The calling AE titles that may associate while the restriction is on."""
    return frozenset(p.ae_title.strip() for p in settings.dicom_ae_profiles)


def caller_refusal(settings: Settings, calling_ae_title: str, host: str) -> FindFailure | None:
    """Why this caller may not query, or None.

    With ``dicom_restrict_calling_ae``, an AE title without a profile is rejected
    at association (A-ASSOCIATE-RJ "calling AE title not recognised", PS3.8
    7.1.1.9: ``status`` None); an AE title whose profile names another host gets
    Refused: Not Authorized on its C-FIND.
    """
    if not settings.dicom_restrict_calling_ae:
        return None
    calling = calling_ae_title.strip()
    if calling not in allowed_calling_aets(settings):
        return FindFailure(None, "calling AE title not recognised")
    if not profile_for(settings, calling, host).known:
        return FindFailure(REFUSED_NOT_AUTHORIZED, "calling AE not allowed from this host")
    return None


@dataclass(frozen=True)
class FindPlan:
    """A C-FIND ready to run: the caller's profile, the effective query, the responses."""

    profile: AeProfile
    parsed: ParsedIdentifier
    query: WorklistQuery
    builder: ResponseBuilder

    @property
    def pending_status(self) -> int:
        """0xFF01 when keys were ignored (PS3.4 K.2.2.1.1.2), else 0xFF00.

        A profile may ask for 0xFF00 regardless (``warn_ignored_keys = false``).
        """
        if self.parsed.ignored and self.profile.warn_ignored_keys:
            return PENDING_OPTIONAL_KEYS_NOT_SUPPORTED
        return PENDING


def plan_find(
    settings: Settings,
    calling_ae_title: str,
    host: str,
    identifier: Dataset,
    today: Callable[[], dt.date] | None = None,
) -> FindPlan | FindFailure:
    """The caller checked, then ``identifier`` translated: the plan, or the failure to answer.

    Parameters
    ----------
    settings
        The worklist policy in force (one consistent read per C-FIND).
    calling_ae_title, host
        Who asks, and from where (for the allow-list and the profile).
    identifier
        The request Identifier, decoded.
    today
        The site's date, for a profile's date window (default: today in
        ``settings.timezone``).
    """
    refusal = caller_refusal(settings, calling_ae_title, host)
    if refusal is not None:
        return refusal
    return translate_query(settings, calling_ae_title, host, identifier, today)


def translate_query(
    settings: Settings,
    calling_ae_title: str,
    host: str,
    identifier: Dataset,
    today: Callable[[], dt.date] | None = None,
) -> FindPlan | FindFailure:
    """The caller's profile, ``identifier`` translated and checked, the profile applied.

    As :func:`plan_find` without the allow-list (the preview explains a query of a
    caller that would be refused, too).
    """
    calling = calling_ae_title.strip()
    profile = profile_for(settings, calling, host)
    zone = site_zone(settings.timezone)
    try:
        parsed = parse_identifier(
            identifier, limit=profile.max_matches, match_keys=profile.match_keys, zone=zone
        )
    except InvalidQueryError as exc:
        return FindFailure(FAILURE_IDENTIFIER_DOES_NOT_MATCH, exc.reason, exc.offending_keyword)
    query = profile.apply(parsed.query, calling, today or (lambda: site_today(zone)))
    times = None
    if parsed.offset is not None or parsed.asks_offset or profile.timezone_offset:
        times = ResponseTimes(zone, parsed.offset)
    builder = ResponseBuilder(identifier, profile.charset, times)
    return FindPlan(profile, parsed, query, builder)


def find_matches(
    session_factory: sessionmaker[Session], query: WorklistQuery
) -> list[StoredItem] | FindFailure:
    """The items of ``query``, read in one unit of work closed before returning.

    Each is its stored row until its WorklistItem is asked for (``.item``): the
    response cache knows most of them by their row alone. A database failure is the
    failure Unable to Process, never an exception.
    """
    try:
        with session_factory() as session:
            return find_stored_items(session, query)
    except SQLAlchemyError:
        return FindFailure(FAILURE_UNABLE_TO_PROCESS, "the worklist database is unavailable")
