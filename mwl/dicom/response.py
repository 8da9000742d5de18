"""WorklistItem + the requested keys -> C-FIND response Identifier (PS3.4 K.6.1.2.2).

Only the keys the Identifier asks for are returned, at the level they were asked,
plus Specific Character Set. The Scheduled Procedure Step Sequence holds one item
with exactly the requested item keys (PS3.4 K.6.1.2.2: each response is one SPS);
a sequence asked with zero items, or with one empty item, returns all the item
keys the broker knows (universal sequence matching, PS3.4 C.2.2.2.6). Keys the
broker knows but holds no value for are returned present and empty (Type 2).
Keys it does not know (including private ones) are not returned (K.2.2.1.1.2).
"""

from __future__ import annotations

import unicodedata

from pydicom.charset import python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mwl.dicom import keys as keytable
from mwl.dicom.keys import START, KeySpec, Level
from mwl.domain import Code, WorklistItem

# Unicode in UTF-8 unless a profile asks for another character set.
DEFAULT_CHARSET = "ISO_IR 192"
# The default repertoire (ASCII): no Specific Character Set element is written.
DEFAULT_REPERTOIRE = ("", "ISO_IR 6")
REPLACEMENT = "?"

_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "DS", "IS"})
_BINARY_INTEGER_VRS = frozenset({"US", "SS", "UL", "SL"})
_SKIPPED = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel"})


def build_response(
    item: WorklistItem, identifier: Dataset, charset: str = DEFAULT_CHARSET
) -> Dataset:
    """Build one pending response Identifier for ``item``.

    Parameters
    ----------
    item
        The matching worklist item.
    identifier
        The request Identifier: its elements name the return keys.
    charset
        Specific Character Set defined term of the response: ``ISO_IR 192``
        (UTF-8, the default), a single-byte set such as ``ISO_IR 100``, or ``""``
        for the default repertoire. Characters the set cannot hold are replaced by
        their unaccented letter when it can, else by ``?``.

    Returns
    -------
    pydicom.dataset.Dataset
        The response Identifier, with Specific Character Set unless the default
        repertoire was asked for.

    Raises
    ------
    ValueError
        ``charset`` is not a character set pydicom can encode.
    """
    codec = _codec(charset)
    response = Dataset()
    if charset not in DEFAULT_REPERTOIRE:
        response.SpecificCharacterSet = charset
    _fill(response, item, identifier, Level.TOP, codec)
    return response


def _codec(charset: str) -> str:
    if charset in DEFAULT_REPERTOIRE:
        return "ascii"
    if charset == DEFAULT_CHARSET:
        return "utf_8"
    try:
        return python_encoding[charset]
    except KeyError:
        raise ValueError(f"{charset!r} is not a supported Specific Character Set") from None


def _fill(
    out: Dataset, source: WorklistItem | Code | None, asked: Dataset, level: Level, codec: str
) -> None:
    for elem in asked:
        keyword = elem.keyword
        if not keyword or elem.tag.is_private or keyword in _SKIPPED:
            continue
        spec = keytable.spec(keyword, level)
        if spec is None:
            continue
        if spec.vr == "SQ":
            items = list(elem.value or ())
            out[elem.tag] = DataElement(
                elem.tag, "SQ", _sequence(spec, source, items[0] if items else None, codec)
            )
        else:
            out[elem.tag] = DataElement(elem.tag, spec.vr, _value(spec, source, codec))


def _all_keys(level: Level) -> Dataset:
    """An item asking for every key of ``level`` (a zero-item sequence, C.2.2.2.6)."""
    item = Dataset()
    for spec in keytable.keys_at(level):
        tag = tag_for_keyword(spec.keyword)
        assert tag is not None
        item[tag] = DataElement(tag, spec.vr, [] if spec.vr == "SQ" else "")
    return item


def _sequence(
    spec: KeySpec, source: WorklistItem | Code | None, asked: Dataset | None, codec: str
) -> Sequence:
    # A sequence key with no item, or with one empty item, asks for every item key.
    if spec.keyword == keytable.SPS_SEQUENCE:
        item = Dataset()
        wanted = asked if asked is not None and len(asked) else _all_keys(Level.SPS)
        _fill(item, source, wanted, Level.SPS, codec)
        return Sequence([item])
    if spec.keyword in keytable.CODE_SEQUENCES and spec.attribute and source is not None:
        held = getattr(source, spec.attribute)
        codes: tuple[Code, ...] = held if isinstance(held, tuple) else (held,) if held else ()
        wanted = asked if asked is not None and len(asked) else _all_keys(Level.CODE)
        items = []
        for code in codes:
            item = Dataset()
            _fill(item, code, wanted, Level.CODE, codec)
            items.append(item)
        return Sequence(items)
    return Sequence()  # Type 2 sequence the broker does not hold: present, empty


def _value(spec: KeySpec, source: WorklistItem | Code | None, codec: str) -> str | int | None:
    if spec.attribute is None or source is None:
        # Zero length: text VRs as "", numbers (US, DS) as None, as pydicom reads them.
        return None if spec.vr in _NUMERIC_VRS else ""
    if spec.attribute == START:
        assert isinstance(source, WorklistItem)
        pattern = "%Y%m%d" if spec.vr == "DA" else "%H%M%S"
        return source.start.strftime(pattern)
    value = getattr(source, spec.attribute)
    text = str(value.value if hasattr(value, "value") else value)
    if spec.vr in _NUMERIC_VRS:
        # Stored as text; binary VRs (US: Pregnancy Status) are written as numbers,
        # DS as its decimal string. Unknown: zero length (Type 2).
        if not text:
            return None
        return int(text) if spec.vr in _BINARY_INTEGER_VRS else text
    return _representable(text, codec) if text else ""


def _representable(text: str, codec: str) -> str:
    """``text`` with what ``codec`` cannot encode folded to a base letter or replaced."""
    if codec == "utf_8":
        return text
    try:
        text.encode(codec)
        return text
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text:
        try:
            ch.encode(codec)
            out.append(ch)
            continue
        except UnicodeEncodeError:
            pass
        base = "".join(
            c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)
        )
        base = base.translate(_LETTERS)
        try:
            base.encode(codec)
            out.append(base or REPLACEMENT)
        except UnicodeEncodeError:
            out.append(REPLACEMENT)
    return "".join(out)


# Letters with no combining mark to drop, and their nearest ASCII spelling.
_LETTERS = str.maketrans(
    {
        "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "æ": "ae", "Æ": "AE",
        "œ": "oe", "Œ": "OE", "ß": "ss", "þ": "th", "Þ": "TH", "ı": "i", "ð": "d", "Ð": "D",
    }
)
