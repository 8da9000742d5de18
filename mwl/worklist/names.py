"""Person-name folding for matching: case- and accent-insensitive, component by component."""

from __future__ import annotations

import unicodedata


def name_search_key(name: str) -> str:
    """Fold a DICOM person name (``Family^Given^...``) for matching.

    Accents are dropped and case folded, so ``MÜLLER``, ``Müller`` and ``muller``
    share one key; ``ß`` folds to ``SS`` (Unicode case folding). Component and
    group separators (``^``, ``=``) are kept, trailing empty components dropped, so
    the key can be matched component-aware. Wildcards ``*`` and ``?`` pass through.
    """
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    # Some letters carry no combining mark to drop (ø, æ, đ, ł): fold them by hand.
    folded = stripped.translate(_LETTERS).upper()
    groups = [group.rstrip("^ ").strip() for group in folded.split("=")]
    return "=".join(groups).rstrip("=")


_LETTERS = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "đ": "d", "ł": "l", "þ": "th", "ı": "i"})
