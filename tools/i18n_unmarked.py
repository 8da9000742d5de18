"""Text of the web page that is not marked for translation, so no catalog can translate it.

``tools/i18n.py check`` runs this after the catalog check. Two kinds of sources:

- templates: the literal text of each Jinja template (what lies outside ``{{ }}``,
  ``{% %}`` and comments) is parsed as HTML; every text node, and every
  ``aria-label``, ``title``, ``placeholder`` and ``alt`` attribute, that holds a word
  of letters is unmarked text (it should be inside ``{{ _('...') }}`` or
  ``{% trans %}``);
- Python modules of ``web/``: a string literal with words given straight to
  ``flash()``, as ``abort(description=...)``, to a form field's ``errors`` or as a
  WTForms ``message=`` is unmarked (it should be ``_()``/``_l()``).

Names that are the same in every language (the product, the languages in the
switch, protocol terms) are listed in :data:`SAME_IN_EVERY_LANGUAGE`. Fast: no
rendering, one parse per file.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from jinja2 import Environment

TEMPLATES = Path("web") / "templates"
PYTHON = Path("web")
ATTRIBUTES = frozenset({"aria-label", "title", "placeholder", "alt"})
# Shown as they are in every language: the product, the names of the languages in
# the switch (each in its own language), and protocol names.
SAME_IN_EVERY_LANGUAGE = frozenset(
    {"mwl", "English", "Deutsch", "Schweiz", "DICOM", "HL7", "JSON", "CSV", "AE"}
)
# A word a reader would read: two letters or more (not "–", "·", "×", "%", digits).
WORD = re.compile(r"[^\W\d_]{2,}")
# Attributes a macro writes as text outside a tag (aria-invalid="true").
ATTRIBUTE_TEXT = re.compile(r'[\w-]+="[^"]*"')


@dataclass(frozen=True)
class Unmarked:
    """A piece of text that no catalog can translate: where, and what."""

    where: str
    text: str


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[int, str]] = []
        self._skip = 0  # inside <script> or <style>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style"}:
            self._skip += 1
        for name, value in attrs:
            if name in ATTRIBUTES and value:
                self.found.append((self.getpos()[0], value))

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style"} and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.found.append((self.getpos()[0], data))


def _wordy(text: str) -> bool:
    words = WORD.findall(ATTRIBUTE_TEXT.sub(" ", text))
    return any(word not in SAME_IN_EVERY_LANGUAGE for word in words)


def template_literals(source: str) -> str:
    """The template with everything Jinja computes blanked out (line numbers kept).

    An expression becomes ``x`` (so that ``title="{{ _('...') }}"`` is not text) and
    a statement or comment nothing; newlines stay.
    """
    out: list[str] = []
    for _lineno, kind, value in Environment().lex(source):
        if kind == "data":
            out.append(value)
        elif kind in {"variable_begin", "block_begin", "comment_begin"}:
            out.append("\0" if kind == "variable_begin" else "")
        elif kind not in {"variable_end", "block_end", "comment_end"}:
            out.append("\n" * value.count("\n"))
        else:
            out.append("")
    # A placeholder no word matches, where an expression was.
    return "".join(out).replace("\0", "x0")


def unmarked_in_template(path: Path, source: str) -> Iterator[Unmarked]:
    """The unmarked text of one template."""
    collector = _TextCollector()
    collector.feed(template_literals(source))
    collector.close()
    for line, text in collector.found:
        cleaned = text.replace("x0", " ")
        if _wordy(cleaned):
            yield Unmarked(f"{path.as_posix()}:{line}", " ".join(cleaned.split()))


_MARKERS = frozenset({"_", "_l", "gettext", "lazy_gettext", "ngettext", "lazy_ngettext"})


def _literal_words(node: ast.AST | None) -> str | None:
    """The text of a plain string literal (or f-string) with words; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value if _wordy(node.value) else None
    if isinstance(node, ast.JoinedStr):
        parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
        text = "".join(str(p) for p in parts)
        return text if _wordy(text) else None
    return None


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _python_texts(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name == "flash" and node.args:
                candidates: list[ast.AST | None] = [node.args[0]]
            elif name == "abort":
                candidates = [k.value for k in node.keywords if k.arg == "description"]
                candidates += node.args[1:2]
            elif name not in _MARKERS:
                candidates = [k.value for k in node.keywords if k.arg == "message"]
            else:
                candidates = []
            for candidate in candidates:
                text = _literal_words(candidate)
                if text is not None:
                    yield node.lineno, text
        elif isinstance(node, ast.Assign):
            errors = any(isinstance(t, ast.Attribute) and t.attr == "errors" for t in node.targets)
            if errors and isinstance(node.value, ast.List | ast.Tuple):
                for element in node.value.elts:
                    text = _literal_words(element)
                    if text is not None:
                        yield node.lineno, text


def unmarked_in_python(path: Path, source: str) -> Iterator[Unmarked]:
    """The unmarked texts of one module of the web adapter."""
    for line, text in _python_texts(ast.parse(source, filename=str(path))):
        yield Unmarked(f"{path.as_posix()}:{line}", text)


def unmarked(root: Path) -> list[Unmarked]:
    """Every unmarked text of the web page's templates and views."""
    found: list[Unmarked] = []
    for path in sorted((root / TEMPLATES).rglob("*.html")):
        source = path.read_text(encoding="utf-8")
        found.extend(unmarked_in_template(path.relative_to(root), source))
    for path in sorted((root / PYTHON).glob("*.py")):
        source = path.read_text(encoding="utf-8")
        found.extend(unmarked_in_python(path.relative_to(root), source))
    return found
