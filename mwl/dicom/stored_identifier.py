"""Worklist query Identifiers as the query log keeps them: DICOM JSON read back and edited.

The query log stores each C-FIND's Identifier as DICOM JSON (PS3.18 F.2). "Test as
this scanner" reads it back to run it again, changes a few keys of it, or starts
from the usual keys of a modality; this module does that, judging no values (the
SCP judges them, as it judges what the modality sent).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from mwl.dicom import keys as keytable
from mwl.dicom.keys import Level

_SPS_SEQUENCE_TAG = Tag(0x0040, 0x0100)
_READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "IS", "DS"})


class UndecodableIdentifierError(ValueError):
    """A stored identifier is not DICOM JSON this module can read."""


def dataset_from_json(text: str) -> Dataset:
    """Read an identifier stored as DICOM JSON (PS3.18 F.2) without validating values.

    The SCP decodes what the modality sent without judging values (the
    translation judges them, with a failure status); pydicom's
    :meth:`~pydicom.dataset.Dataset.from_json` would warn about each invalid
    value instead, so the elements are built here with validation off.

    Raises
    ------
    UndecodableIdentifierError
        The text is not a DICOM JSON object.
    """
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return _dataset(data)
    except _READ_ERRORS as exc:
        raise UndecodableIdentifierError(f"the identifier cannot be read: {exc}") from exc


def _dataset(data: Mapping[str, Any]) -> Dataset:
    ds = Dataset()
    for tag_text, element in data.items():
        tag = Tag(int(tag_text, 16))
        vr = str(element["vr"])
        if "BulkDataURI" in element:
            continue  # a reference to elsewhere: never part of a worklist query
        value: Any
        if "InlineBinary" in element:
            value = base64.b64decode(element["InlineBinary"])
        else:
            values = list(element.get("Value") or [])
            if vr == "SQ":
                value = DicomSequence([_dataset(item or {}) for item in values])
            else:
                if vr == "PN":
                    values = [_person_name(v) for v in values]
                elif vr == "AT":
                    values = [Tag(int(str(v), 16)) for v in values]
                elif vr == "DS":
                    values = [str(v) for v in values]
                if not values:
                    value = None if vr in _NUMBER_VRS or vr == "AT" else ""
                else:
                    value = values[0] if len(values) == 1 else values
        ds.add(DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE))
    return ds


def _person_name(value: object) -> str:
    if isinstance(value, Mapping):
        groups = [str(value.get(g, "") or "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
        while groups and not groups[-1]:
            groups.pop()
        return "=".join(groups)
    return "" if value is None else str(value)


def read_identifier(identifier: Dataset | str) -> Dataset:
    if isinstance(identifier, Dataset):
        return identifier
    return dataset_from_json(identifier)


# Return keys of a typical modality's query, for a test run with no stored identifier.
_DEFAULT_TOP = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "ReferringPhysicianName",
)
_DEFAULT_SPS = (
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ScheduledStationName",
    "ScheduledProcedureStepStatus",
)


def default_identifier() -> Dataset:
    """An Identifier asking for the usual return keys, with no matching value."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in _DEFAULT_TOP:
        _set(ds, keyword, "")
    sps = Dataset()
    for keyword in _DEFAULT_SPS:
        _set(sps, keyword, "")
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _set(ds: Dataset, keyword: str, value: str) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    vr = dictionary_VR(tag)
    # As a modality may send it: values are judged by the translation, not here.
    ds.add(DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE))


def identifier_with_keys(identifier: Dataset | str | None, keys: Mapping[str, str]) -> Dataset:
    """A copy of ``identifier`` with the given matching keys set (``""``: universal).

    Parameters
    ----------
    identifier
        The identifier to start from (e.g. the AE's latest, as stored), or
        ``None`` / ``""`` for :func:`default_identifier`. A stored identifier
        that cannot be read is replaced by the default one.
    keys
        DICOM keyword -> value as a modality would send it (``CT``, ``Doe*``,
        ``20261121-20261123``, ``CT\\MR``). Keys of the SPS item (Modality,
        Scheduled Station AE Title, SPS Start Date...) go in the Scheduled
        Procedure Step Sequence item; the others at the top level.

    Raises
    ------
    ValueError
        A keyword that is not a worklist key.
    """
    try:
        base = read_identifier(identifier) if identifier else default_identifier()
    except UndecodableIdentifierError:
        base = default_identifier()
    ds = _copy(base)
    for keyword, value in keys.items():
        if keytable.spec(keyword, Level.TOP) is not None:
            _set(ds, keyword, value)
        elif keytable.spec(keyword, Level.SPS) is not None:
            if _SPS_SEQUENCE_TAG not in ds or not ds[_SPS_SEQUENCE_TAG].value:
                ds.ScheduledProcedureStepSequence = [Dataset()]
            _set(ds.ScheduledProcedureStepSequence[0], keyword, value)
        else:
            raise ValueError(f"{keyword!r} is not a worklist matching key")
    return ds


def _copy(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        if elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", DicomSequence([_copy(i) for i in elem.value])))
        else:
            value = elem.value
            if isinstance(value, MultiValue):
                value = list(value)
            out.add(DataElement(elem.tag, elem.VR, value, validation_mode=pydicom_config.IGNORE))
    return out


__all__ = [
    "UndecodableIdentifierError",
    "dataset_from_json",
    "default_identifier",
    "identifier_with_keys",
    "read_identifier",
]
