"""WorklistItem + the requested keys -> C-FIND response Identifier (PS3.4 K.6.1.2.2).

Only the keys the Identifier asks for are returned, at the level they were asked,
plus Specific Character Set. The Scheduled Procedure Step Sequence holds one item
with exactly the requested item keys (PS3.4 K.6.1.2.2: each response is one SPS);
a sequence asked with zero items, or with one empty item, returns all the item
keys the broker knows (universal sequence matching, PS3.4 C.2.2.2.6). Keys the
broker knows but holds no value for are returned present and empty (Type 2).
Keys it does not know (including private ones) are not returned (K.2.2.1.1.2).

A C-FIND may return hundreds of items, so :class:`ResponseBuilder` reads the
request once and then, per item, either builds a pydicom Dataset or writes the
encoded Identifier directly (the little endian transfer syntaxes): building and
encoding a Dataset costs about 1 ms per item, writing the bytes a few percent of
that. Both give the same bytes (tests/dicom/test_response.py compares them).

Modalities ask the same question again and again (their list every minute or
so), so the written Identifiers are kept: :data:`ENCODED` maps (request shape,
transfer syntax, item) to bytes, the item being a WorklistItem or the row it is
made from (:class:`~mwl.worklist.matching.StoredItem`, which then need not be made at all).
The key holds the item's whole content, so a changed item is a new key and can
never get old bytes; the oldest entries go once
the cache holds :data:`ENCODED_BUDGET` bytes (first in, first out: a hit then costs
one dictionary lookup, and an evicted item that is still asked for comes back on
its next query).
"""

from __future__ import annotations

import datetime as dt
import struct
import threading
import unicodedata
from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from enum import Enum

from pydicom import config
from pydicom.charset import convert_encodings, custom_encoders, encode_string, python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName

from mwl.dicom import keys as keytable
from mwl.dicom.keys import START, KeySpec, Level
from mwl.domain import Code, WorklistItem
from mwl.timezones import aware, format_offset, utc_offset
from mwl.worklist.matching import StoredItem

# Unicode in UTF-8 unless a profile asks for another character set.
DEFAULT_CHARSET = "ISO_IR 192"
# The default repertoire (ASCII): no Specific Character Set element is written.
DEFAULT_REPERTOIRE = ("", "ISO_IR 6")
REPLACEMENT = "?"
_DEFAULT_CODEC = python_encoding[DEFAULT_REPERTOIRE[1]]

_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "DS", "IS"})
_BINARY_INTEGER_VRS = frozenset({"US", "SS", "UL", "SL"})
_SKIPPED = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel"})

# Encoding rules of PS3.5 for the VRs of the key table: text VRs written in the
# Specific Character Set (6.1.2.3), 4-byte lengths in explicit VR (7.1.2),
# UI padded with NUL and other text with a space (6.2).
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_TIMEZONE_OFFSET = Tag(0x0008, 0x0201)
# The attribute of the Timezone Offset From UTC pseudo key (not in the key table).
_TZ_OFFSET = "timezone offset"


@dataclass(frozen=True)
class ResponseTimes:
    """How the responses write their times (PS3.3 C.12.1.1.8).

    With ``offset`` None each response carries the site's UTC offset at its step's
    start and the times as stored (the site's wall-clock time); with ``offset``
    every response carries it and the start converted to it.
    """

    zone: dt.tzinfo
    offset: dt.timedelta | None = None

    def start(self, local: dt.datetime) -> dt.datetime:
        """The stored (site) start as written."""
        if self.offset is None:
            return local
        moment = aware(local, self.zone)
        return moment.astimezone(dt.timezone(self.offset)).replace(tzinfo=None)

    def offset_text(self, local: dt.datetime | None) -> str:
        """The Timezone Offset From UTC value of a response for a step starting at ``local``."""
        if self.offset is not None:
            return format_offset(self.offset)
        return format_offset(utc_offset(local, self.zone)) if local is not None else ""


_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_U16 = struct.Struct("<H").pack
_U32 = struct.Struct("<I").pack
# Transfer syntax -> whether its VR is implicit: the ones ResponseBuilder.encode writes.
_WRITTEN_SYNTAXES = {str(ImplicitVRLittleEndian): True, str(ExplicitVRLittleEndian): False}


# Memory for encoded Identifiers kept across queries: tens of thousands of items.
ENCODED_BUDGET = 48 * 1024 * 1024
# What one entry costs beyond its bytes: its key (the item's row, ~45 values), the
# dictionary slot; an estimate, so that the budget bounds the whole.
_ENTRY_OVERHEAD = 2048
# Request shapes remembered before the cache starts over (each C-FIND's key structure
# and character set is one; a modality has one or two).
_MAX_SHAPES = 4096


class EncodedResponses:
    """Encoded response Identifiers by (shape, VR mode, item), oldest out first."""

    def __init__(self, budget: int = ENCODED_BUDGET) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        # Insertion-ordered: the first key is the oldest.
        self._entries: dict[tuple[int, bool, object], bytes] = {}
        self._size = 0
        self._shapes: dict[tuple[str, tuple[_Key, ...]], int] = {}

    def shape(self, charset: str, keys: tuple[_Key, ...]) -> int:
        """A small number naming one request shape (its keys and character set)."""
        with self._lock:
            known = self._shapes.get((charset, keys))
            if known is not None:
                return known
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
                self._entries.clear()
                self._size = 0
            # Numbers are never reused while entries that carry them exist: they grow.
            number = self._next_shape()
            self._shapes[(charset, keys)] = number
            return number

    _counter = 0

    def _next_shape(self) -> int:
        EncodedResponses._counter += 1
        return EncodedResponses._counter

    def get(self, key: tuple[int, bool, object]) -> bytes | None:
        """The bytes kept for ``key``, or None (a dictionary read: atomic, no lock)."""
        return self._entries.get(key)

    def put(self, key: tuple[int, bool, object], data: bytes) -> None:
        """Keep ``data`` for ``key``, dropping the oldest entries over budget."""
        with self._lock:
            if self._entries.setdefault(key, data) is not data:
                return  # another thread put the same bytes first
            self._size += len(data) + _ENTRY_OVERHEAD
            entries = self._entries
            while self._size > self.budget and entries:
                self._size -= len(entries.pop(next(iter(entries)))) + _ENTRY_OVERHEAD

    def clear(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._entries.clear()
            self._shapes.clear()
            self._size = 0


#: The process's cache of encoded Identifiers.
ENCODED = EncodedResponses()


def build_response(
    item: WorklistItem, identifier: Dataset, charset: str = DEFAULT_CHARSET
) -> Dataset:
    """Build one pending response Identifier for ``item``.

    For the many responses of one C-FIND, use :class:`ResponseBuilder`, which
    reads the request once.

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
    return ResponseBuilder(identifier, charset).build(item)


# What a key's value is read from: the item, or a code of one of its code sequences.
_Source = WorklistItem | Code | None


@dataclass(frozen=True)
class _Key:
    """A return key as the request asked for it; ``item_keys`` for a sequence's items."""

    tag: BaseTag
    spec: KeySpec
    item_keys: tuple[_Key, ...] = ()
    # The element header before the value length: implicit VR, explicit VR.
    implicit_header: bytes = b""
    explicit_header: bytes = b""


class ResponseBuilder:
    """The response Identifiers of one C-FIND: which keys to return is worked out once.

    Parameters
    ----------
    identifier
        The request Identifier: its elements name the return keys.
    charset
        Specific Character Set of the responses (see :func:`build_response`).

    Raises
    ------
    ValueError
        ``charset`` is not a character set pydicom can encode.
    """

    def __init__(
        self,
        identifier: Dataset,
        charset: str = DEFAULT_CHARSET,
        times: ResponseTimes | None = None,
    ) -> None:
        self._codec = _codec(charset)
        self._charset = charset
        self._times = times
        # As pydicom writes text: in the Specific Character Set, else ISO 646 (ISO_IR 6).
        self._encodings = convert_encodings(charset or DEFAULT_REPERTOIRE[1])
        self._keys = _requested(identifier, Level.TOP)
        if times is not None:
            # Timezone Offset From UTC, in tag order among the top-level keys.
            tz_key = _key(
                _TIMEZONE_OFFSET, KeySpec("TimezoneOffsetFromUTC", _TZ_OFFSET, "SH", Level.TOP)
            )
            self._keys = tuple(sorted((*self._keys, tz_key), key=lambda k: k.tag))
        # In one character set without code extensions (no ISO 2022 escapes) and not one
        # of pydicom's own JIS encoders, pydicom writes text as Python's codec does; encode
        # then calls the codec, a tenth of the cost of encode_string and PersonName.
        only = self._encodings[0] if len(self._encodings) == 1 else ""
        self._plain_codec = only if only and only not in custom_encoders else ""
        # What encode writes per transfer syntax (implicit VR or not), worked out once.
        self._writers_by_syntax = {
            implicit: self._writers(self._keys, implicit) for implicit in (True, False)
        }
        self._shape = ENCODED.shape(f"{charset}|{times!r}", self._keys)
        self._charset_key = (
            None
            if charset in DEFAULT_REPERTOIRE
            else _key(
                _SPECIFIC_CHARACTER_SET, KeySpec("SpecificCharacterSet", None, "CS", Level.TOP)
            )
        )
        # Specific Character Set (CS, short length in explicit VR) leads every response.
        self._charset_element = {True: b"", False: b""}
        if self._charset_key is not None:
            value = self._value_bytes("CS")(charset)
            self._charset_element = {
                True: self._charset_key.implicit_header + _U32(len(value)) + value,
                False: self._charset_key.explicit_header + _U16(len(value)) + value,
            }

    def build(self, item: WorklistItem) -> Dataset:
        """The pending response Identifier for ``item`` as a Dataset.

        Parameters
        ----------
        item
            The matching worklist item.

        Returns
        -------
        pydicom.dataset.Dataset
            Exactly the requested keys, plus Specific Character Set unless the
            default repertoire was asked for.
        """
        response = Dataset()
        if self._charset not in DEFAULT_REPERTOIRE:
            response.SpecificCharacterSet = self._charset
        self._fill(response, item, self._keys)
        return response

    @property
    def empty(self) -> bool:
        """Whether the responses hold no element at all (nothing known asked, no charset)."""
        return not self._keys and self._charset_key is None

    @staticmethod
    def writes(transfer_syntax: str) -> bool:
        """Whether :meth:`encode` can write Identifiers in ``transfer_syntax``."""
        return transfer_syntax in _WRITTEN_SYNTAXES

    def encode(self, item: WorklistItem | StoredItem, transfer_syntax: str) -> bytes:
        """The pending response Identifier for ``item``, encoded.

        The same bytes as :meth:`build` written by pydicom, without making the
        Dataset; kept in :data:`ENCODED` for the next query of the same shape.

        Parameters
        ----------
        item
            The matching worklist item, or its stored row.
        transfer_syntax
            Implicit or Explicit VR Little Endian (see :meth:`writes`).

        Raises
        ------
        ValueError
            Another transfer syntax.
        """
        try:
            implicit = _WRITTEN_SYNTAXES[transfer_syntax]
        except KeyError:
            raise ValueError(f"cannot write transfer syntax {transfer_syntax}") from None
        content = item.content if isinstance(item, StoredItem) else item
        key = (self._shape, implicit, content)
        data = ENCODED.get(key)
        if data is None:
            whole = item.item if isinstance(item, StoredItem) else item
            writers = self._writers_by_syntax[implicit]
            data = self._charset_element[implicit] + _write(whole, writers)
            ENCODED.put(key, data)
        return data

    # ------------------------------------------------------------------ Dataset

    def _fill(
        self, out: Dataset, source: WorklistItem | Code | None, keys: tuple[_Key, ...]
    ) -> None:
        for key in keys:
            spec = key.spec
            value: object
            if spec.vr == "SQ":
                items = []
                for item_source in _item_sources(spec, source):
                    item = Dataset()
                    self._fill(item, item_source, key.item_keys)
                    items.append(item)
                value = Sequence(items)
            else:
                value = _value(spec, source, self._codec, self._times)
            # The values come from the database already in their VR's form.
            out[key.tag] = DataElement(key.tag, spec.vr, value, validation_mode=config.IGNORE)

    # ------------------------------------------------------------------ bytes

    def _writers(self, keys: tuple[_Key, ...], implicit: bool) -> tuple[_Writer, ...]:
        return tuple(self._writer(key, implicit) for key in keys)

    def _writer(self, key: _Key, implicit: bool) -> _Writer:
        """What writes ``key``'s element (tag, VR, length, value), worked out once per query."""
        spec = key.spec
        header = key.implicit_header if implicit else key.explicit_header
        length = _U32 if implicit or spec.vr in _LONG_LENGTH_VRS else _U16
        if spec.vr == "SQ":
            item_writers = self._writers(key.item_keys, implicit)

            def sequence(source: _Source) -> bytes:
                items = [_write(s, item_writers) for s in _item_sources(spec, source)]
                data = b"".join(_ITEM + _U32(len(item)) + item for item in items)
                return header + length(len(data)) + data

            return sequence
        value_bytes = self._value_bytes(spec.vr)
        codec = self._codec
        if spec.attribute is None:
            empty = value_bytes(_value(spec, None, codec))
            element = header + length(len(empty)) + empty
            return lambda source: element
        times = self._times
        if spec.vr in _NUMERIC_VRS or spec.attribute in (START, _TZ_OFFSET):

            def element_of(source: _Source) -> bytes:
                data = value_bytes(_value(spec, source, codec, times))
                return header + length(len(data)) + data

            return element_of
        # Most keys are text fields: what _value does for them, in fewer steps (a
        # response is a few dozen of these, and a C-FIND may send thousands).
        attribute = spec.attribute
        text_bytes = self._text_bytes(spec.vr)

        def text_element(source: _Source) -> bytes:
            value = getattr(source, attribute, None)
            if value.__class__ is not str:  # no source, or an enum such as SpsStatus
                data = value_bytes(_value(spec, source, codec))
            else:
                data = text_bytes(value if codec == "utf_8" else _representable(value, codec))
            return header + length(len(data)) + data

        return text_element

    def _value_bytes(self, vr: str) -> Callable[[str | int | None], bytes]:
        """How a value of ``vr`` is written: nothing for an empty one, US as binary."""
        text_bytes = self._text_bytes(vr)

        def value_bytes(value: str | int | None) -> bytes:
            if value is None or value == "":
                return b""
            if isinstance(value, int):
                return _U16(value)  # US, the only binary VR of the key table
            return text_bytes(value)

        return value_bytes

    def _text_bytes(self, vr: str) -> Callable[[str], bytes]:
        """How text of ``vr`` is written: encoded as PS3.5 6.1.2.3 says, padded to even length."""
        encode: Callable[[str], bytes]
        if vr == "PN":
            encode = self._person_name
        elif vr in _CHARSET_VRS:
            encode = self._charset_text
        else:
            encode = _default_text
        padding = b"\x00" if vr == "UI" else b" "

        def text_bytes(value: str) -> bytes:
            data = encode(value)
            return data + padding if len(data) % 2 else data

        return text_bytes

    def _charset_text(self, value: str) -> bytes:
        if self._plain_codec:
            try:
                return value.encode(self._plain_codec)
            except UnicodeEncodeError:
                pass  # pydicom's way: a warning and replacement characters
        return encode_string(value, self._encodings)

    def _person_name(self, value: str) -> bytes:
        if self._plain_codec:
            try:
                # pydicom's PN encoding with one plain codec: the component groups
                # without the trailing empty ones.
                return value.rstrip("=").encode(self._plain_codec)
            except UnicodeEncodeError:
                pass
        return PersonName(value, validation_mode=config.IGNORE).encode(self._encodings)


# Writes one element of a response Identifier from its source.
_Writer = Callable[[_Source], bytes]


def _write(source: _Source, writers: tuple[_Writer, ...]) -> bytes:
    return b"".join([write(source) for write in writers])


def _default_text(value: str) -> bytes:
    # Text outside the Specific Character Set's reach (PS3.5 6.1.2.3): the default
    # repertoire, as pydicom writes it.
    return value.encode(_DEFAULT_CODEC)


def _codec(charset: str) -> str:
    if charset in DEFAULT_REPERTOIRE:
        return "ascii"
    if charset == DEFAULT_CHARSET:
        return "utf_8"
    try:
        return python_encoding[charset]
    except KeyError:
        raise ValueError(f"{charset!r} is not a supported Specific Character Set") from None


def _key(tag: BaseTag, spec: KeySpec, item_keys: tuple[_Key, ...] = ()) -> _Key:
    head = struct.pack("<HH", tag.group, tag.element)
    explicit = head + spec.vr.encode() + (b"\x00\x00" if spec.vr in _LONG_LENGTH_VRS else b"")
    return _Key(tag, spec, item_keys, head, explicit)


def _requested(asked: Dataset, level: Level) -> tuple[_Key, ...]:
    """The keys of ``asked`` that the broker returns at ``level``, in tag order."""
    keys = []
    for elem in asked:
        keyword = elem.keyword
        if not keyword or elem.tag.is_private or keyword in _SKIPPED:
            continue
        spec = keytable.spec(keyword, level)
        if spec is None:
            continue
        item_keys: tuple[_Key, ...] = ()
        if spec.vr == "SQ":
            items = list(elem.value or ())
            item_keys = _item_keys(spec, items[0] if items else None)
        keys.append(_key(elem.tag, spec, item_keys))
    return tuple(sorted(keys, key=lambda k: k.tag))


def _item_keys(spec: KeySpec, asked: Dataset | None) -> tuple[_Key, ...]:
    """The keys asked inside a sequence's item; all of them for a zero-item or empty one."""
    if spec.keyword == keytable.SPS_SEQUENCE:
        level = Level.SPS
    elif spec.keyword in keytable.CODE_SEQUENCES:
        level = Level.CODE
    else:
        return ()  # a sequence the broker holds nothing for: returned empty
    if asked is not None and len(asked):
        return _requested(asked, level)
    # Universal sequence matching (C.2.2.2.6): every key of the item's level.
    keys = [
        _key(Tag(_tag(s.keyword)), s, _item_keys(s, None) if s.vr == "SQ" else ())
        for s in keytable.keys_at(level)
    ]
    return tuple(sorted(keys, key=lambda k: k.tag))


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword  # the key table holds dictionary keywords only
    return tag


def _item_sources(
    spec: KeySpec, source: WorklistItem | Code | None
) -> SequenceOf[WorklistItem | Code | None]:
    """What each item of a sequence key is filled from."""
    if spec.keyword == keytable.SPS_SEQUENCE:
        # PS3.4 K.6.1.2.2: each response is one SPS, so the sequence holds one item.
        return (source,)
    if spec.keyword in keytable.CODE_SEQUENCES and spec.attribute and source is not None:
        held = getattr(source, spec.attribute)
        return held if isinstance(held, tuple) else (held,) if held else ()
    return ()  # Type 2 sequence the broker does not hold: present, empty


def _value(
    spec: KeySpec,
    source: WorklistItem | Code | None,
    codec: str,
    times: ResponseTimes | None = None,
) -> str | int | None:
    if spec.attribute is None or source is None:
        # Zero length: text VRs as "", numbers (US, DS) as None, as pydicom reads them.
        return None if spec.vr in _NUMERIC_VRS else ""
    if spec.attribute == _TZ_OFFSET:
        assert isinstance(source, WorklistItem) and times is not None
        return times.offset_text(source.start)
    if spec.attribute == START:
        assert isinstance(source, WorklistItem)
        start = source.start if times is None else times.start(source.start)
        # Not strftime: it takes three times as long (3 µs here), twice per response.
        if spec.vr == "DA":
            return f"{start.year:04}{start.month:02}{start.day:02}"
        return f"{start.hour:02}{start.minute:02}{start.second:02}"
    value = getattr(source, spec.attribute)
    text = str(value.value if isinstance(value, Enum) else value)  # SpsStatus: its term
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
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        base = base.translate(_LETTERS)
        try:
            base.encode(codec)
            out.append(base or REPLACEMENT)
        except UnicodeEncodeError:
            out.append(REPLACEMENT)
    return "".join(out)


# Letters with no combining mark to drop, and their nearest ASCII spelling.
# fmt: off
_LETTERS = str.maketrans(
    {
        "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "æ": "ae", "Æ": "AE",
        "œ": "oe", "Œ": "OE", "ß": "ss", "þ": "th", "Þ": "TH", "ı": "i", "ð": "d", "Ð": "D",
    }
)
# fmt: on
