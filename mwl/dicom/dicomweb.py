"""DICOMweb MWL-RS and MPPS-RS (PS3.18 chapters 14 and 15) on the DIMSE pipelines.

The web adapter never imports this package: the composition root lends it a
:class:`DicomWebService` (typed in :mod:`web.store`), which takes the request's
parts as plain values (query parameters, JSON) and answers with HTTP statuses and
DICOM JSON. Everything DICOM happens here:

- **Search** (PS3.18 14.4, "corresponds to the DIMSE MWL C-FIND"): the query
  parameters become a C-FIND Identifier (:func:`search_identifier`), which goes
  through the SCP's own pipeline (:func:`mwl.dicom.find.translate_query`,
  :func:`~mwl.dicom.find.find_matches`, the plan's response builder),
  so a REST search and a C-FIND with that Identifier match the same steps and return
  the same elements.
- **Create, Update, Retrieve** (PS3.18 15.4-15.6, N-CREATE, N-SET, N-GET): the
  DICOM JSON payload becomes a Dataset and goes through
  :func:`mwl.dicom.mpps.create_mpps` and :func:`~mwl.dicom.mpps.set_mpps`, the
  paths of the DIMSE handlers, so the checks, the status lifecycle of the scheduled
  steps and the RIS messages are the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_has_tag, dictionary_keyword, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings, current_settings
from mwl.audit.auditor import Auditor
from mwl.config import Settings
from mwl.dicom import keys as keytable
from mwl.dicom.find import (
    FAILURE_UNABLE_TO_PROCESS,
    FindFailure,
    find_matches,
    translate_query,
)
from mwl.dicom.keys import Level
from mwl.dicom.mpps import (
    DUPLICATE_SOP_INSTANCE,
    NO_SUCH_SOP_INSTANCE,
    PROCESSING_FAILURE,
    MppsCaller,
    MppsRefusal,
    create_mpps,
    set_mpps,
)
from mwl.store.models import PerformedProcedureStep

logger = logging.getLogger(__name__)

#: Modality Performed Procedure Step SOP Class (PS3.4 F.7.1).
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
#: The query parameters of PS3.18 Table 8.3.4-1 that are not attribute matches.
RESERVED = frozenset({"includefield", "fuzzymatching", "offset", "limit"})
#: How deep an attribute path may go: a code item inside the SPS item.
MAX_PATH_DEPTH = 3
#: Warning (RFC 9111 5.5) text for fuzzymatching=true (PS3.18 8.3.4.1).
FUZZY_WARNING = (
    "The fuzzymatching parameter is not supported. Only literal matching has been performed."
)

_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
# Bulk data VRs: no query matches them (PS3.4 C.2.2.2), and DICOMweb sends no bulk data.
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# What pydicom raises on a JSON value it cannot take for the element's VR.
_JSON_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class DicomWebError(Exception):
    """A request the service refuses: the HTTP status and the reason, in words."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class SearchAnswer:
    """The answer to a Search: 200 with the matches, 204, or a failure with its reason.

    ``warnings`` are the texts of ``Warning: 299`` headers (PS3.18 8.3.4.1).
    """

    status: int
    items: tuple[dict[str, Any], ...] = ()
    reason: str = ""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class MppsAnswer:
    """The answer to an MPPS-RS transaction: status, reason, the Data Set (Retrieve)."""

    status: int
    reason: str = ""
    dataset: dict[str, Any] | None = None


@dataclass
class _Identifier:
    """The Identifier being built, and what the parameters named (for the errors)."""

    dataset: Dataset = field(default_factory=Dataset)
    named: set[tuple[BaseTag, ...]] = field(default_factory=set)


def _attribute(part: str) -> BaseTag:
    """One step of an attribute path: a keyword or eight hex digits, of the dictionary."""
    if _TAG.match(part):
        tag = Tag(int(part, 16))
    else:
        number = tag_for_keyword(part)
        if number is None:
            raise DicomWebError(400, f"{part!r} is neither a DICOM keyword nor a tag (ggggeeee)")
        tag = Tag(number)
    if tag.is_private or not dictionary_has_tag(tag) or tag.group in (0x0000, 0xFFFE):
        raise DicomWebError(400, f"{part!r} is not an attribute of the DICOM dictionary")
    return tag


def attribute_path(text: str) -> tuple[BaseTag, ...]:
    """``{attributeID}`` of PS3.18 8.3.4.1: tags or keywords joined by ``.``, sequences first.

    Raises
    ------
    DicomWebError
        400: an unknown attribute, a path through an element that is no sequence, or
        deeper than :data:`MAX_PATH_DEPTH`.
    """
    parts = text.split(".")
    if len(parts) > MAX_PATH_DEPTH:
        raise DicomWebError(400, f"{text!r} goes deeper than {MAX_PATH_DEPTH} attributes")
    path = tuple(_attribute(part) for part in parts)
    for tag in path[:-1]:
        if dictionary_VR(tag) != "SQ":
            raise DicomWebError(400, f"{dictionary_keyword(tag)} in {text!r} is not a sequence")
    return path


def _item_of(dataset: Dataset, tag: BaseTag) -> Dataset:
    """The single item of the sequence ``tag`` in ``dataset``, made when missing."""
    element = dataset.get(tag)
    if element is None or not element.value:
        item = Dataset()
        dataset[tag] = DataElement(tag, "SQ", DicomSequence([item]))
        return item
    first: Dataset = element.value[0]
    return first


def _element(tag: BaseTag, value: str) -> DataElement:
    """The query element for ``value`` (empty: a return key, PS3.4 C.2.2.1.2)."""
    # An ambiguous VR of the dictionary ("US or SS", "OB or OW"): its first form.
    choices = dictionary_VR(tag).split(" or ")
    vr = "OB" if _BINARY_VRS.intersection(choices) else choices[0]
    if vr == "SQ":
        if value:
            raise DicomWebError(400, f"{dictionary_keyword(tag)} is a sequence: it takes no value")
        return DataElement(tag, "SQ", DicomSequence([]))
    if not value:
        return DataElement(tag, vr, None)
    if vr in _BINARY_VRS:
        raise DicomWebError(400, f"{dictionary_keyword(tag)} (VR {vr}) cannot be matched on")
    if "\x00" in value:
        # No text VR holds a NUL (PS3.5 6.2), and PostgreSQL refuses one in a string.
        raise DicomWebError(400, f"{dictionary_keyword(tag)} has a NUL character")
    if vr == "UI":
        # PS3.18 8.3.4.1: a list of UIDs may be separated by commas.
        value = value.replace(",", "\\")
    if vr in {"US", "SS", "UL", "SL"}:
        try:
            numbers = [int(v) for v in value.split("\\")]
        except ValueError:
            raise DicomWebError(
                400, f"{dictionary_keyword(tag)} takes whole numbers, not {value!r}"
            ) from None
        return _checked_by_the_pipeline(tag, vr, numbers if len(numbers) > 1 else numbers[0])
    return _checked_by_the_pipeline(tag, vr, value)


def _checked_by_the_pipeline(tag: BaseTag, vr: str, value: object) -> DataElement:
    # The C-FIND translation judges the value (and names the key in its 400); pydicom's
    # own check would only log it, value and all, which may be patient data.
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _add(identifier: _Identifier, path: tuple[BaseTag, ...], value: str, *, match: bool) -> None:
    if match and path in identifier.named:
        raise DicomWebError(400, f"{'.'.join(dictionary_keyword(t) for t in path)} is given twice")
    identifier.named.add(path)
    target = identifier.dataset
    for tag in path[:-1]:
        target = _item_of(target, tag)
    last = path[-1]
    if match or last not in target:
        target[last] = _element(last, value)


def _default_return_keys() -> Dataset:
    """The return keys of a Search without includefield: every key of the key table.

    As a modality asking for everything: each top-level key empty, code sequences and
    the SPS Sequence with zero items (universal sequence matching, PS3.4 C.2.2.2.6).
    """
    dataset = Dataset()
    for spec in keytable.keys_at(Level.TOP):
        tag = Tag(spec.keyword)
        dataset[tag] = _element(tag, "")
    return dataset


def _complete_sps_item(dataset: Dataset) -> None:
    """A SPS item made by match keys gets every other SPS key as a return key."""
    items = dataset.get(keytable.SPS_SEQUENCE)
    if not items:
        return
    item: Dataset = items[0]
    for spec in keytable.keys_at(Level.SPS):
        tag = Tag(spec.keyword)
        if tag not in item:
            item[tag] = _element(tag, "")


def search_identifier(params: Sequence[tuple[str, str]]) -> Dataset:
    """The C-FIND Identifier a Search's query parameters mean.

    ``{attributeID}={value}`` pairs are matching keys (PS3.18 8.3.4.1), in the SPS
    item when the path says so (``00400100.00080060=CT``,
    ``ScheduledProcedureStepSequence.Modality=CT``); ``includefield`` adds return keys
    (comma-separated, or ``all``). Without includefield, and with ``all``, every key
    the broker knows is returned (the Identifier of a universal query). Parameters
    in :data:`RESERVED` other than includefield are the caller's (paging,
    fuzzymatching) and are skipped here.

    Raises
    ------
    DicomWebError
        400 naming the parameter at fault.
    """
    identifier = _Identifier()
    includes: list[str] = []
    for name, value in params:
        if name == "includefield":
            includes.extend(part.strip() for part in value.split(","))
            continue
        if name in RESERVED:
            continue
        _add(identifier, attribute_path(name), value, match=True)
    if "all" in includes and len(includes) > 1:
        raise DicomWebError(400, "includefield=all must be the only includefield")
    for include in includes:
        if include and include != "all":
            _add(identifier, attribute_path(include), "", match=False)
    for tag, element in _default_return_keys().items():
        if tag not in identifier.dataset:
            identifier.dataset[tag] = element
    _complete_sps_item(identifier.dataset)
    return identifier.dataset


def _json_dataset(payload: object) -> Dataset:
    """A DICOM JSON payload (one object, or an array of one, PS3.18 F.2) as a Dataset."""
    if isinstance(payload, list):
        if len(payload) != 1:
            raise DicomWebError(400, "the payload holds one Data Set")
        payload = payload[0]
    if not isinstance(payload, dict):
        raise DicomWebError(400, "the payload is a DICOM JSON object (PS3.18 F.2)")
    try:
        dataset = Dataset.from_json(payload)
        # Decodes every element now, so a bad value is a 400 here and not later.
        dataset.to_json_dict()
    except _JSON_ERRORS as exc:
        raise DicomWebError(400, f"the payload is not valid DICOM JSON: {exc}") from None
    return dataset


def parse_payload(body: bytes) -> Dataset:
    """The request body (``application/dicom+json``) as a Dataset; 400 when it is none."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise DicomWebError(400, "the payload is not JSON") from None
    return _json_dataset(payload)


def _check_uid(uid: str) -> None:
    if len(uid) > 64 or not _UID.match(uid):
        raise DicomWebError(400, f"{uid[:70]!r} is not a UID (PS3.5 9.1)")


def _check_instance_uid(dataset: Dataset, uid: str) -> None:
    """A SOP Instance UID in the payload must be the one of the target resource."""
    for keyword in ("SOPInstanceUID", "AffectedSOPInstanceUID"):
        given = dataset.get(keyword)
        if given is not None and str(given) and str(given) != uid:
            raise DicomWebError(400, f"{keyword} {given} is not the MPPS UID {uid} of the URL")
        if keyword in dataset:
            del dataset[keyword]
    if "SOPClassUID" in dataset:
        if str(dataset.SOPClassUID) not in ("", MPPS_SOP_CLASS):
            raise DicomWebError(400, f"SOPClassUID is not {MPPS_SOP_CLASS} (MPPS)")
        del dataset.SOPClassUID


# DIMSE statuses of create_mpps and set_mpps -> HTTP (PS3.18 Tables 15.4.3-1, 15.5.3-1).
_HTTP_OF_REFUSAL = {
    DUPLICATE_SOP_INSTANCE: 409,
    NO_SUCH_SOP_INSTANCE: 404,
}


def _http_refusal(refusal: MppsRefusal) -> MppsAnswer:
    if refusal.not_allowed or refusal.error_id:
        # An attribute only a create may set, or a step that may no longer be updated:
        # "incompatible with the data of the target" (PS3.18 15.5.3.1).
        return MppsAnswer(409, refusal.comment)
    if refusal.status == PROCESSING_FAILURE and "database" in refusal.comment:
        return MppsAnswer(503, refusal.comment)
    return MppsAnswer(_HTTP_OF_REFUSAL.get(refusal.status, 400), refusal.comment)


def _included(dataset: dict[str, Any], includes: Iterable[str]) -> dict[str, Any]:
    """Only the top-level attributes ``includes`` names (all of them for ``all`` or none)."""
    wanted = [part.strip() for value in includes for part in value.split(",") if part.strip()]
    if not wanted or wanted == ["all"]:
        return dataset
    if "all" in wanted:
        raise DicomWebError(400, "includefield=all must be the only includefield")
    tags = {f"{int(attribute_path(name)[0]):08X}" for name in wanted}
    return {tag: value for tag, value in dataset.items() if tag in tags}


class DicomWebService:
    """MWL-RS Search and MPPS-RS Create, Update, Retrieve, as the web page calls them.

    Parameters
    ----------
    settings
        The broker's settings, or :class:`~mwl.admin.overrides.LiveSettings` to follow
        changes made on the admin page; read once per request.
    readers, writers
        Reader sessions (the worklist, a step to retrieve) and writer sessions (MPPS).
    auditor
        Records MPPS as ATNA Procedure Records, as the DIMSE handlers do.
    """

    def __init__(
        self,
        settings: Settings | LiveSettings,
        readers: sessionmaker[Session],
        writers: sessionmaker[Session],
        auditor: Auditor | None = None,
    ) -> None:
        self._settings = settings
        self._readers = readers
        self._writers = writers
        self._auditor = auditor

    def search(
        self,
        params: Sequence[tuple[str, str]],
        *,
        offset: int = 0,
        limit: int | None = None,
        fuzzy: bool = False,
        peer_host: str = "",
    ) -> SearchAnswer:
        """Search the worklist (PS3.18 14.4) as a C-FIND with the same keys would.

        The matches are those of the DIMSE SCP for a caller without an AE profile
        (the default profile: date window, statuses and match limit of the
        settings); ``offset`` and ``limit`` page through them in the SCP's order
        (start, SPS ID, row), which is total, so pages neither repeat nor skip.
        """
        try:
            identifier = search_identifier(params)
        except DicomWebError as exc:
            return SearchAnswer(exc.status, reason=exc.reason)
        policy = current_settings(self._settings)
        plan = translate_query(policy, "", peer_host, identifier)
        if isinstance(plan, FindFailure):
            return SearchAnswer(400, reason=plan.comment)
        query = plan.query
        if limit is not None:
            wanted = offset + limit
            bound = wanted if query.limit is None else min(query.limit, wanted)
            query = dataclasses.replace(query, limit=bound)
        found = find_matches(self._readers, query)
        if isinstance(found, FindFailure):
            status = 503 if found.status == FAILURE_UNABLE_TO_PROCESS else 400
            return SearchAnswer(status, reason=found.comment)
        page = found[offset:] if limit is None else found[offset : offset + limit]
        # The plan's own builder: the responses a modality without a profile gets
        # (its Specific Character Set, and whatever else the profile shapes).
        items = tuple(plan.builder.build(stored.item).to_json_dict() for stored in page)
        warnings = []
        if fuzzy:
            warnings.append(FUZZY_WARNING)
        if plan.parsed.unsupported_keys:
            ignored = ", ".join(sorted(set(plan.parsed.unsupported_keys)))
            warnings.append(f"Matching on {ignored} is not supported; the value was ignored.")
        return SearchAnswer(200 if items else 204, items, warnings=tuple(warnings))

    def create_mpps(self, uid: str, body: bytes, user: str, address: str) -> MppsAnswer:
        """Create Transaction (PS3.18 15.4, N-CREATE): 201, or 400/409/503 with the reason."""
        return self._store_mpps(create_mpps, 201, uid, body, user, address)

    def update_mpps(self, uid: str, body: bytes, user: str, address: str) -> MppsAnswer:
        """Update Transaction (PS3.18 15.5, N-SET): 200, or 400/404/409/503 with the reason."""
        return self._store_mpps(set_mpps, 200, uid, body, user, address)

    def _store_mpps(
        self,
        store: Callable[..., object],
        done: int,
        uid: str,
        body: bytes,
        user: str,
        address: str,
    ) -> MppsAnswer:
        """Check the request, then the DIMSE path's create or set: ``done`` or the refusal."""
        try:
            _check_uid(uid)
            dataset = parse_payload(body)
            _check_instance_uid(dataset, uid)
        except DicomWebError as exc:
            return MppsAnswer(exc.status, exc.reason)
        caller = MppsCaller(user, address, via="MPPS-RS")
        result = store(
            dataset, uid, caller, self._writers, current_settings(self._settings), self._auditor
        )
        if isinstance(result, MppsRefusal):
            return _http_refusal(result)
        return MppsAnswer(done)

    def retrieve_mpps(self, uid: str, includefields: Sequence[str] = ()) -> MppsAnswer:
        """Retrieve Transaction (PS3.18 15.6, N-GET): the stored attributes, N-SETs merged."""
        try:
            _check_uid(uid)
            with self._readers() as session:
                stored = session.scalar(
                    select(PerformedProcedureStep.dataset_json).where(
                        PerformedProcedureStep.sop_instance_uid == uid
                    )
                )
            if stored is None:
                return MppsAnswer(404, f"there is no Modality Performed Procedure Step {uid}")
            dataset = Dataset.from_json(stored)
            dataset.SOPClassUID = MPPS_SOP_CLASS
            dataset.SOPInstanceUID = uid
            return MppsAnswer(200, dataset=_included(dataset.to_json_dict(), includefields))
        except DicomWebError as exc:
            return MppsAnswer(exc.status, exc.reason)
        except SQLAlchemyError:
            return MppsAnswer(503, "the database is unavailable")


__all__ = [
    "FUZZY_WARNING",
    "MPPS_SOP_CLASS",
    "RESERVED",
    "DicomWebError",
    "DicomWebService",
    "MppsAnswer",
    "SearchAnswer",
    "attribute_path",
    "parse_payload",
    "search_identifier",
]
