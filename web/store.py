"""Per-application state and the database sessions of each request."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.login_limits import LoginPolicy
from mwl.admin.sessions import SessionPolicy
from mwl.audit.auditor import Auditor
from mwl.config import Settings
from mwl.domain import WorklistItem
from mwl.operations.message_view import ChainPlan, MessageView, ReprocessOutcome
from mwl.orders.history import AttributeRow

# What the composition root lends the web page from the other adapters, so that the
# web package never imports mwl.hl7 or mwl.dicom itself (see ARCHITECTURE.md):
# - reprocess an HL7 message: (message key, username) -> outcome
#   (mwl.hl7.reprocess.reprocess_message with settings and writer sessions bound);
# - describe an HL7 message: raw bytes -> segments and named fields
#   (mwl.hl7.describe.describe_message);
# - preview a worklist query as an AE would get it, and say why a step is not in
#   the answer: QueryPreviewer below (mwl.dicom.preview.WorklistPreviewer).
Hl7Reprocessor = Callable[[int, str], ReprocessOutcome]
Hl7Describer = Callable[[bytes], MessageView]
# - answer DICOMweb worklist searches and MPPS: DicomWebService below
#   (mwl.dicom.dicomweb.DicomWebService);
# - list what a modality receives for a worklist item: item -> rows (tag, keyword,
#   name, VR, value; mwl.dicom.listing.item_attributes with the settings bound).
ItemLister = Callable[[WorklistItem], Sequence[AttributeRow]]


class ChainReprocessor(Protocol):
    """Re-run a logged message and every later message of its order (``mwl.hl7.reprocess``).

    ``preview`` applies them in a transaction that is rolled back and returns the
    plan (outcomes, each step's before -> after, a fingerprint); ``apply`` does it
    for good unless the fingerprint changed since the preview.
    """

    def preview(self, key: int) -> ChainPlan:
        """What re-running would do; nothing is stored."""
        ...

    def apply(self, key: int, username: str, expected: str) -> ChainPlan:
        """Re-run and commit, when the order is as the preview with ``expected`` saw it."""
        ...


class QueryPreviewer(Protocol):
    """Run a calling AE's worklist query as the SCP would; nothing is stored or logged.

    Identifiers travel as DICOM JSON (as the query log stores them). The results
    are :mod:`mwl.dicom.preview`'s ``QueryPreview`` (status, error comment, items
    with their responses, the effective query as conditions) and ``Explanation``
    (the step, and per condition a ``KeyVerdict``: what the step holds, passed).
    """

    def preview(self, calling_ae: str, identifier_json: str, peer_host: str = "") -> Any:
        """What a C-FIND with this identifier from ``calling_ae`` would get now."""
        ...

    def explain(
        self, calling_ae: str, identifier_json: str, sps_key: int, peer_host: str = ""
    ) -> Any:
        """The step and each condition of the query judged on it (``Explanation``), or None."""
        ...

    def identifier_with_keys(self, identifier_json: str, keys: Mapping[str, str]) -> str:
        """The identifier (``""``: a default one) with these keywords set to these values."""
        ...


class MppsRsAnswer(Protocol):
    """What an MPPS-RS transaction answers (``mwl.dicom.dicomweb.MppsAnswer``)."""

    @property
    def status(self) -> int:
        """The HTTP status: 200, 201, or a failure (400, 404, 409, 503)."""
        ...

    @property
    def reason(self) -> str:
        """Why it failed, in words (empty on success)."""
        ...

    @property
    def dataset(self) -> dict[str, Any] | None:
        """The retrieved step as a DICOM JSON object (Retrieve only)."""
        ...


class MwlRsAnswer(Protocol):
    """What a Search answers (``mwl.dicom.dicomweb.SearchAnswer``)."""

    @property
    def status(self) -> int:
        """200 with matches, 204 without, or a failure (400, 503)."""
        ...

    @property
    def reason(self) -> str:
        """Why it failed, in words (empty on success)."""
        ...

    @property
    def items(self) -> tuple[dict[str, Any], ...]:
        """The matches as DICOM JSON objects, in the SCP's order."""
        ...

    @property
    def warnings(self) -> tuple[str, ...]:
        """Texts for ``Warning: 299`` headers (PS3.18 8.3.4.1)."""
        ...


class DicomWebService(Protocol):
    """MWL-RS and MPPS-RS (PS3.18 chapters 14, 15) on the SCP's own pipelines.

    Lent by the composition root (:class:`mwl.dicom.dicomweb.DicomWebService`): the
    search is the C-FIND pipeline, the MPPS transactions the N-CREATE and N-SET
    path, so a REST client and a modality get the same matches, statuses and RIS
    messages. Parameters and payloads travel as text and bytes, answers as DICOM
    JSON objects (``items`` of a search, ``dataset`` of a retrieve).
    """

    def search(
        self,
        params: Sequence[tuple[str, str]],
        *,
        offset: int = 0,
        limit: int | None = None,
        fuzzy: bool = False,
        peer_host: str = "",
    ) -> MwlRsAnswer:
        """Search Transaction (14.4): ``SearchAnswer`` (status, items, reason, warnings)."""
        ...

    def create_mpps(self, uid: str, body: bytes, user: str, address: str) -> MppsRsAnswer:
        """Create Transaction (15.4): ``MppsAnswer`` (status, reason)."""
        ...

    def update_mpps(self, uid: str, body: bytes, user: str, address: str) -> MppsRsAnswer:
        """Update Transaction (15.5): ``MppsAnswer``."""
        ...

    def retrieve_mpps(self, uid: str, includefields: Sequence[str] = ()) -> MppsRsAnswer:
        """Retrieve Transaction (15.6): ``MppsAnswer`` with ``dataset``."""
        ...


@dataclass(frozen=True)
class WebState:
    """What ``create_app`` hands to the views, kept in ``app.extensions["mwl"]``."""

    settings: Settings
    session_factory: sessionmaker[Session]
    # Failed-login delays and session lifetimes, from the settings.
    login_policy: LoginPolicy
    session_policy: SessionPolicy
    # Writer sessions (BEGIN IMMEDIATE on SQLite) for edits, new orders and settings.
    writer_factory: sessionmaker[Session]
    # Set only when create_app built the engine itself; its owner disposes it.
    owned_engine: Engine | None = None
    hl7_reprocessor: Hl7Reprocessor | None = None
    chain_reprocessor: ChainReprocessor | None = None
    hl7_describer: Hl7Describer | None = None
    query_previewer: QueryPreviewer | None = None
    item_lister: ItemLister | None = None
    # MWL-RS and MPPS-RS under /dicomweb (web.dicomweb); None: those answer 503.
    dicomweb: DicomWebService | None = None
    # For /health: each listener's name -> whether it is bound (web.health).
    listener_status: Callable[[], Mapping[str, bool]] | None = None
    # ATNA audit (mwl.audit): logins and logouts; None records nothing.
    auditor: Auditor | None = None


def state() -> WebState:
    """The current application's :class:`WebState`."""
    found: WebState = current_app.extensions["mwl"]
    return found


def db_session() -> Session:
    """The request's read session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = state().session_factory()
    session: Session = g.db_session
    return session


def writer() -> sessionmaker[Session]:
    """The writer session factory: ``with writer().begin() as session:`` is one change."""
    return state().writer_factory


def rollback_session() -> None:
    """Roll back the request's session, if it has one (after an error)."""
    session: Session | None = g.get("db_session")
    if session is not None:
        session.rollback()


def close_session(_error: BaseException | None = None) -> None:
    """Teardown: close the request's session; anything not committed is rolled back."""
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()
