"""The full dataset a modality receives for one worklist item, as rows people can read.

The admin page's item view shows it: the response the C-FIND SCP would send to
a query asking for every return key (a universal query, PS3.4 C.2.2.2.3, with
zero-item sequences, C.2.2.2.6), in the broker-wide response character set, so
the page and the modality never disagree on what was sent.
"""

from __future__ import annotations

from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from mwl.config import Settings
from mwl.dicom import keys as keytable
from mwl.dicom.keys import Level
from mwl.dicom.response import build_response
from mwl.domain import WorklistItem
from mwl.orders.history import AttributeRow

ITEM_TAG = "(FFFE,E000)"


def universal_identifier() -> Dataset:
    """An Identifier asking for every top-level return key the broker knows."""
    identifier = Dataset()
    for spec in keytable.keys_at(Level.TOP):
        tag = tag_for_keyword(spec.keyword)
        assert tag is not None, spec.keyword
        identifier[tag] = DataElement(tag, spec.vr, [] if spec.vr == "SQ" else None)
    return identifier


def item_attributes(item: WorklistItem, settings: Settings) -> list[AttributeRow]:
    """Every attribute the modality receives for ``item``, sequence items included.

    Parameters
    ----------
    item
        The worklist item (any status: the listing shows what would be sent).
    settings
        ``dicom_response_charset`` decides the Specific Character Set and how
        characters outside it are written (folded or replaced, as on the wire).

    Returns
    -------
    list[AttributeRow]
        In tag order, each sequence followed by its items' attributes one level deeper.
    """
    response = build_response(item, universal_identifier(), settings.dicom_response_charset)
    return dataset_rows(response)


def dataset_rows(dataset: Dataset) -> list[AttributeRow]:
    """``dataset`` as rows: each element, and after a sequence its items one level deeper."""
    rows: list[AttributeRow] = []
    _flatten(dataset, 0, rows)
    return rows


def _flatten(dataset: Dataset, depth: int, rows: list[AttributeRow]) -> None:
    for elem in dataset:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        name = dictionary_description(elem.tag)
        if elem.VR == "SQ":
            count = len(elem.value)
            rows.append(AttributeRow(depth, tag, elem.keyword, name, "SQ", f"{count} item(s)"))
            for number, item in enumerate(elem.value, start=1):
                rows.append(AttributeRow(depth + 1, ITEM_TAG, "", f"Item {number}", "", ""))
                _flatten(item, depth + 1, rows)
        else:
            rows.append(AttributeRow(depth, tag, elem.keyword, name, elem.VR, _text(elem.value)))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)
