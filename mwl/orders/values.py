"""Checks of values people type against DICOM's rules: VR lengths, characters, dates, charset.

The admin page and the JSON API both change the worklist through the core, so the
rules live here, once: a value a modality would receive is refused when it breaks
its Value Representation (PS3.5 6.2: PN 64 characters per component group, LO 64,
SH 16, AE 16, CS 16 upper case; no backslash in a single value, no control
characters) or cannot be written in the response character set.

The core may not import pydicom, so the few Specific Character Set defined terms the
responses can be written in (:func:`mwl.dicom.profiles.check_charset` admits the
single-byte sets and UTF-8) are mapped to Python codecs here; a test checks the
table against pydicom's.

Messages are English templates with ``%(name)s`` placeholders, marked with
:func:`N_` so the web page can translate them (``gettext(template, **params)``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from mwl.domain import CHARSET_CODECS
from mwl.errors import MwlError

# The same terms (but the empty default) with a name a person recognises, in the order
# the settings page offers them. Kept in the core because the core may not ask
# pydicom; tests check both tables against the DICOM adapter's own check.
CHARSET_NAMES: Mapping[str, str] = {
    "ISO_IR 192": "Unicode (UTF-8)",
    "ISO_IR 6": "ASCII",
    "ISO_IR 100": "Latin-1, Western Europe",
    "ISO_IR 101": "Latin-2, Central Europe",
    "ISO_IR 109": "Latin-3, Southern Europe",
    "ISO_IR 110": "Latin-4, Northern Europe",
    "ISO_IR 148": "Latin-5, Turkish",
    "ISO_IR 144": "Cyrillic",
    "ISO_IR 127": "Arabic",
    "ISO_IR 126": "Greek",
    "ISO_IR 138": "Hebrew",
    "ISO_IR 166": "Thai",
    "ISO_IR 13": "Japanese katakana (JIS X 0201)",
    "GB18030": "Chinese (GB18030)",
    "GBK": "Chinese (GBK)",
}

SEXES = ("M", "F", "O")
# Requested Procedure Priority (0040,1003) defined terms (PS3.3 C.4.11).
PRIORITIES = ("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW")


def N_(message: str) -> str:
    """Mark ``message`` for the translation catalog; returns it unchanged."""
    return message


@dataclass(frozen=True)
class Problem:
    """What is wrong with one value: an English template and its parameters."""

    template: str
    params: Mapping[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.template % self.params if self.params else self.template


class EditError(MwlError):
    """A change to the worklist is refused; nothing was stored.

    Attributes
    ----------
    errors
        Field name -> message people can read (English).
    problems
        Field name -> :class:`Problem`, for a page that translates the message.
    """

    def __init__(self, problems: Mapping[str, Problem]) -> None:
        self.problems: dict[str, Problem] = dict(problems)
        self.errors: dict[str, str] = {name: str(p) for name, p in self.problems.items()}
        super().__init__("; ".join(f"{name}: {text}" for name, text in self.errors.items()))

    @classmethod
    def one(cls, name: str, template: str, **params: object) -> EditError:
        """An error about a single field."""
        return cls({name: Problem(template, params)})


class Checker:
    """Collects the problems of several values, so a form shows them all at once.

    Each ``check_*`` method returns the value normalised (surrounding spaces removed,
    code strings in upper case) and records a problem when it breaks a rule.
    """

    def __init__(self, charset: str = "ISO_IR 192") -> None:
        self.codec = CHARSET_CODECS.get(charset)
        self.charset = charset
        self.problems: dict[str, Problem] = {}

    def add(self, name: str, template: str, **params: object) -> None:
        """Record a problem with field ``name`` (the first one per field is kept)."""
        self.problems.setdefault(name, Problem(template, params))

    def raise_if_any(self) -> None:
        """Raise :class:`EditError` with every problem recorded."""
        if self.problems:
            raise EditError(self.problems)

    def _text(self, name: str, value: str, limit: int, *, backslash: bool = False) -> bool:
        if len(value) > limit:
            self.add(
                name,
                N_("At most %(limit)s characters (this has %(length)s)."),
                limit=limit,
                length=len(value),
            )
            return False
        if not backslash and "\\" in value:
            self.add(name, N_("The backslash (\\) is not allowed here."))
            return False
        if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value):
            self.add(name, N_("Line breaks, tabs and other control characters are not allowed."))
            return False
        if self.codec is not None:
            try:
                value.encode(self.codec)
            except UnicodeEncodeError as exc:
                self.add(
                    name,
                    N_(
                        "The character %(char)s cannot be sent to the modalities"
                        " (character set %(charset)s)."
                    ),
                    char=repr(value[exc.start]),
                    charset=self.charset,
                )
                return False
        return True

    def long_string(self, name: str, value: str, *, required: bool = False) -> str:
        """LO: 64 characters, one value."""
        value = value.strip()
        if required and not value:
            self.add(name, N_("This is required."))
        self._text(name, value, 64)
        return value

    def short_string(self, name: str, value: str, *, required: bool = False) -> str:
        """SH: 16 characters, one value."""
        value = value.strip()
        if required and not value:
            self.add(name, N_("This is required."))
        self._text(name, value, 16)
        return value

    def ae_title(self, name: str, value: str) -> str:
        """AE: 16 characters of ASCII, no backslash; surrounding spaces are not significant."""
        value = value.strip()
        if not value.isascii():
            self.add(name, N_("An AE title has only ASCII letters, digits and punctuation."))
            return value
        self._text(name, value, 16)
        return value

    def code_string(
        self, name: str, value: str, *, required: bool = False, allowed: tuple[str, ...] = ()
    ) -> str:
        """CS: 16 characters of A-Z, 0-9, space and underscore (upper-cased here)."""
        value = value.strip().upper()
        if required and not value:
            self.add(name, N_("This is required."))
        elif allowed and value and value not in allowed:
            self.add(name, N_("Must be one of %(allowed)s."), allowed=", ".join(allowed))
        elif len(value) > 16 or not all(
            ch.isascii() and (ch.isalnum() or ch in " _") for ch in value
        ):
            self.add(
                name,
                N_("At most 16 of the letters A-Z, digits, space and underscore."),
            )
        return value

    def person_name(self, name: str, value: str, *, required: bool = False) -> str:
        """PN: up to three component groups of five components, 64 characters each."""
        value = value.strip()
        groups = value.split("=")
        if required and not groups[0].strip("^ "):
            self.add(name, N_("A family or given name is required."))
            return value
        if len(groups) > 3:
            self.add(name, N_("A person name has at most three component groups (=)."))
            return value
        for group in groups:
            if group.count("^") > 4:
                self.add(
                    name,
                    N_(
                        "A person name has at most five components"
                        " (Family^Given^Middle^Prefix^Suffix)."
                    ),
                )
                return value
            if not self._text(name, group, 64):
                return value
        return value

    def date(self, name: str, value: str, *, not_after: dt.date | None = None) -> str:
        """DA: ``YYYYMMDD``, a real calendar date, or empty."""
        value = value.strip()
        if not value:
            return value
        try:
            if len(value) != 8 or not value.isdigit():
                raise ValueError(value)
            day = dt.datetime.strptime(value, "%Y%m%d").date()
        except ValueError:
            self.add(name, N_("Not a calendar date (YYYYMMDD, e.g. 19800214)."))
            return value
        if day.year < 1900:
            self.add(name, N_("The date is before 1900."))
        elif not_after is not None and day > not_after:
            self.add(name, N_("The date is in the future."))
        return value

    def start(self, name: str, value: dt.datetime) -> dt.datetime:
        """A scheduled start: a naive local date-time from 1900 on, to the second."""
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)
        if value.year < 1900:
            self.add(name, N_("The date is before 1900."))
        return value.replace(microsecond=0)
