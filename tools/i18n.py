#!/usr/bin/env python3
"""Translations of the web page: extract, update, compile and check the message catalogs.

Usage (from the repository root, with the project's virtual environment)::

    python tools/i18n.py update     # extract from web/ and merge into every messages.po
    python tools/i18n.py compile    # messages.po -> messages.mo (both are committed)
    python tools/i18n.py check      # exit 1, listing every msgid without a translation
                                    # and every text of the page not marked at all
    python tools/i18n.py extract    # write web/translations/messages.pot (for PO editors)

``update --lang xx`` starts a catalog for a new language. What is extracted is
configured in ``babel.cfg`` (files under ``web/`` and ``mwl/worklist/``); besides
Babel's default keywords, ``_l``,
``lazy_gettext``, ``lazy_ngettext`` and ``lazy_pgettext`` mark messages (form labels
and other strings translated when used). A comment starting ``TRANSLATORS:`` just
above a message reaches the translator. It is the same as ``pybabel extract -F
babel.cfg -k _l -k lazy_gettext ... -o messages.pot . && pybabel update -i
messages.pot -d web/translations && pybabel compile -d web/translations``, plus the
check, which pybabel lacks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import io
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from babel import Locale
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[1]
MAPPING = "babel.cfg"
TRANSLATIONS = Path("web") / "translations"
DOMAIN = "messages"
KEYWORDS = {
    **DEFAULT_KEYWORDS,
    "_l": None,
    "lazy_gettext": None,
    "lazy_ngettext": (1, 2),
    "lazy_pgettext": ((1, "c"), 2),
}
COMMENT_TAGS = ("TRANSLATORS:",)
# Only the web adapter has user-visible text, the core's refusals of page changes
# (mwl/orders: N_), and the core's declaration of the
# stored fields the labels the item page gives them (N_); walking the rest of the
# tree (tests, virtual environments, artifacts) would only be slow.
SOURCE_DIRS = (("web",), ("mwl", "worklist"), ("mwl", "orders"))
PO_WIDTH = 100


def swiss(text: str) -> str:
    """German as written in Switzerland: no ß, which Swiss orthography writes ss."""
    return text.replace("ß", "ss").replace("ẞ", "SS")


# Catalogs compiled from another language's, so that translators keep one .po: only
# the .mo is written (and committed); the check sees that it is up to date.
DERIVED: dict[str, tuple[str, Callable[[str], str]]] = {"de_CH": ("de", swiss)}

Key = tuple[str, str | None]  # (msgid, context); a plural message by its singular


def _version() -> str:
    try:
        return importlib.metadata.version("mwl")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def message_key(message: Message) -> Key:
    """A message's identity in a catalog: its (singular) msgid and context."""
    msgid = message.id[0] if isinstance(message.id, tuple | list) else message.id
    return str(msgid), message.context


def extract(root: Path = ROOT) -> Catalog:
    """Every translatable message of the web page, as a catalog template.

    Parameters
    ----------
    root
        The repository root, holding ``babel.cfg`` and ``web/``.
    """
    with (root / MAPPING).open(encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config, filename=str(root / MAPPING))
    template = Catalog(
        project="mwl", version=_version(), copyright_holder="mwl contributors", charset="utf-8"
    )

    def only_sources(dirpath: str) -> bool:
        relative = Path(dirpath).relative_to(root).parts if Path(dirpath) != root else ()
        if any(part.startswith((".", "_")) for part in relative):
            return False
        # Inside a source directory, or on the way to one.
        return any(relative[: len(d)] == d or d[: len(relative)] == relative for d in SOURCE_DIRS)

    found = extract_from_dir(
        str(root),
        method_map,
        options_map,
        keywords=KEYWORDS,
        comment_tags=COMMENT_TAGS,
        strip_comment_tags=True,
        directory_filter=only_sources,
    )
    for filename, lineno, message, comments, context in found:
        location = (Path(filename).as_posix(), lineno)
        template.add(message, None, [location], auto_comments=comments, context=context)
    return template


def po_path(lang: str, root: Path = ROOT) -> Path:
    """Where the catalog of ``lang`` lives."""
    return root / TRANSLATIONS / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def languages(root: Path = ROOT) -> list[str]:
    """The languages that have a catalog."""
    base = root / TRANSLATIONS
    return sorted(p.parent.parent.name for p in base.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def read_catalog(path: Path, lang: str) -> Catalog:
    """A ``.po`` file as a catalog."""
    with path.open("rb") as po:
        return read_po(po, locale=lang, domain=DOMAIN)


def po_bytes(catalog: Catalog) -> bytes:
    """A catalog as the ``.po`` text written to disk (without obsolete entries)."""
    out = io.BytesIO()
    write_po(out, catalog, width=PO_WIDTH, ignore_obsolete=True, include_previous=False)
    return out.getvalue()


def mo_bytes(catalog: Catalog) -> bytes:
    """A catalog compiled to ``.mo``; fuzzy and empty translations are left out."""
    out = io.BytesIO()
    write_mo(out, catalog, use_fuzzy=False)
    return out.getvalue()


def _strings(message: Message) -> tuple[str, ...]:
    string = message.string
    if isinstance(string, tuple | list):
        return tuple(string)
    return (string or "",)


def translations_of(catalog: Catalog) -> dict[Key, object]:
    """The translations a compiled catalog serves: key -> string (tuple for plurals)."""
    result: dict[Key, object] = {}
    for message in catalog:
        if not message.id or message.fuzzy:
            continue
        strings = _strings(message)
        if all(strings):
            result[message_key(message)] = tuple(strings) if message.pluralizable else strings[0]
    return result


def update(
    root: Path = ROOT, langs: Iterable[str] = (), out: Callable[[str], None] = print
) -> None:
    """Merge the extracted messages into each catalog (creating new languages' ones).

    New messages arrive untranslated (or fuzzy, when a similar msgid had a
    translation); messages gone from the source are dropped.
    """
    template = extract(root)
    for lang in sorted(set(languages(root)) | set(langs)):
        path = po_path(lang, root)
        if path.exists():
            catalog = read_catalog(path, lang)
            before = po_bytes(catalog)
            # Keep the header dates, so that an update without new messages
            # leaves the file as it was.
            template.creation_date = catalog.creation_date
            catalog.update(template, no_fuzzy_matching=True, update_header_comment=False)
        else:
            catalog = Catalog(
                locale=lang,
                domain=DOMAIN,
                project="mwl",
                version=_version(),
                copyright_holder="mwl contributors",
                language_team=f"{Locale.parse(lang).english_name} <mwl contributors>",
                last_translator="mwl contributors",
                charset="utf-8",
                header_comment=(
                    f"# {Locale.parse(lang).english_name} translations of the mwl web page.\n"
                    "# This file is distributed under the same license as the mwl project.\n#"
                ),
                revision_date=dt.datetime.now(dt.UTC),
                # Babel marks a new catalog fuzzy as a whole, which would keep it
                # from compiling; its entries are what a translator reviews.
                fuzzy=False,
            )
            catalog.update(template, no_fuzzy_matching=True)
            before = b""
        text = po_bytes(catalog)
        if text != before:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text)
            out(f"updated {path.relative_to(root)}")
        else:
            out(f"{path.relative_to(root)} is up to date")


def derived_catalog(lang: str, root: Path = ROOT) -> Catalog:
    """The catalog of a :data:`DERIVED` language, made from its source's ``.po``."""
    source, transform = DERIVED[lang]
    original = read_catalog(po_path(source, root), source)
    catalog = Catalog(locale=lang, domain=DOMAIN, charset="utf-8", fuzzy=False)
    for message in original:
        if not message.id:
            continue
        strings = message.string
        if isinstance(strings, tuple | list):
            changed: str | tuple[str, ...] = tuple(transform(s) for s in strings)
        else:
            changed = transform(strings or "")
        catalog.add(message.id, changed, flags=message.flags, context=message.context)
    return catalog


def _compiled(root: Path) -> Iterable[tuple[str, Path, Catalog]]:
    for lang in languages(root):
        path = po_path(lang, root)
        yield lang, path.with_suffix(".mo"), read_catalog(path, lang)
    for lang, (source, _transform) in DERIVED.items():
        if po_path(source, root).exists():
            yield lang, po_path(lang, root).with_suffix(".mo"), derived_catalog(lang, root)


def compile_catalogs(root: Path = ROOT, out: Callable[[str], None] = print) -> None:
    """Write each language's ``messages.mo`` from its ``messages.po`` (and the derived ones)."""
    for _lang, mo, catalog in _compiled(root):
        data = mo_bytes(catalog)
        mo.parent.mkdir(parents=True, exist_ok=True)
        if not mo.exists() or mo.read_bytes() != data:
            mo.write_bytes(data)
            out(f"compiled {mo.relative_to(root)}")
        else:
            out(f"{mo.relative_to(root)} is up to date")


@dataclass(frozen=True)
class Problem:
    """One reason a catalog is not ready: what, which msgid, where it is used."""

    kind: str  # missing, untranslated, fuzzy, format, stale-mo
    msgid: str
    where: str = ""
    detail: str = ""


def problems(root: Path = ROOT) -> dict[str, list[Problem]]:
    """What keeps each language's catalog from translating every message of the page."""
    template = extract(root)
    found: dict[str, list[Problem]] = {}
    for lang in languages(root):
        path = po_path(lang, root)
        catalog = read_catalog(path, lang)
        listed: list[Problem] = []
        for message in template:
            if not message.id:
                continue
            key = message_key(message)
            where = ", ".join(f"{f}:{n}" for f, n in message.locations[:3])
            entry = catalog.get(key[0], context=key[1])
            if entry is None:
                listed.append(Problem("missing", key[0], where))
            elif entry.fuzzy:
                listed.append(Problem("fuzzy", key[0], where))
            elif not all(_strings(entry)):
                listed.append(Problem("untranslated", key[0], where))
        for message, errors in catalog.check():
            for error in errors:
                listed.append(Problem("format", message_key(message)[0], "", str(error)))
        mo = path.with_suffix(".mo")
        if not mo.exists():
            listed.append(Problem("stale-mo", "", str(mo.relative_to(root)), "missing"))
        else:
            with mo.open("rb") as compiled:
                served = translations_of(read_mo(compiled))
            if served != translations_of(catalog):
                listed.append(
                    Problem("stale-mo", "", str(mo.relative_to(root)), "differs from the .po")
                )
        found[lang] = listed
    for lang, (source, _transform) in DERIVED.items():
        if not po_path(source, root).exists():
            continue
        mo = po_path(lang, root).with_suffix(".mo")
        listed = []
        if not mo.exists():
            listed.append(Problem("stale-mo", "", str(mo.relative_to(root)), "missing"))
        else:
            with mo.open("rb") as compiled:
                served = translations_of(read_mo(compiled))
            if served != translations_of(derived_catalog(lang, root)):
                listed.append(
                    Problem(
                        "stale-mo", "", str(mo.relative_to(root)), f"differs from {source}'s .po"
                    )
                )
        found[lang] = listed
    return found


def _unmarked_module() -> object:
    # Beside this file; loaded by path, as this tool is (a script, not a package).
    path = Path(__file__).with_name("i18n_unmarked.py")
    spec = importlib.util.spec_from_file_location("i18n_unmarked", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("i18n_unmarked", module)
    spec.loader.exec_module(module)
    return module


def unmarked_report(root: Path = ROOT) -> str:
    """Text of the templates and views that is not marked for translation, if any."""
    found = _unmarked_module().unmarked(root)  # type: ignore[attr-defined]
    if not found:
        return ""
    lines = [f"text not marked for translation: {len(found)}"]
    lines += [f"  {item.where}  {item.text[:80]!r}" for item in found]
    lines.append(
        "Fix: wrap it in {{ _('...') }} (templates) or _()/_l() (Python), or, when it reads"
        " the same in every language, add it to SAME_IN_EVERY_LANGUAGE in tools/i18n_unmarked.py."
    )
    return "\n".join(lines)


def report(found: dict[str, list[Problem]], root: Path = ROOT) -> str:
    """The problems as a readable list, with the commands that fix them."""
    lines: list[str] = []
    for lang, listed in found.items():
        if not listed:
            continue
        name = Locale.parse(lang).english_name
        lines.append(f"{po_path(lang, root).relative_to(root)} ({name}): {len(listed)} problem(s)")
        for problem in listed:
            if problem.kind == "stale-mo":
                lines.append(f"  stale-mo      {problem.where} {problem.detail}")
                continue
            text = f"  {problem.kind:<13} {problem.msgid!r}"
            if problem.where:
                text += f"  ({problem.where})"
            if problem.detail:
                text += f"  {problem.detail}"
            lines.append(text)
    if lines:
        lines.append(
            "Fix: python tools/i18n.py update, then translate every entry listed (fill its"
            " msgstr, remove the 'fuzzy' flag), then python tools/i18n.py compile."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["extract", "update", "compile", "check"])
    parser.add_argument("--lang", action="append", default=[], help="also start this language")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.command == "extract":
        pot = root / TRANSLATIONS / f"{DOMAIN}.pot"
        pot.write_bytes(po_bytes(extract(root)))
        print(f"wrote {pot.relative_to(root)}")
    elif args.command == "update":
        update(root, args.lang)
    elif args.command == "compile":
        compile_catalogs(root)
    else:
        found = problems(root)
        text = "\n".join(t for t in (report(found, root), unmarked_report(root)) if t)
        if text:
            print(text)
            return 1
        counted = len([m for m in extract(root) if m.id])
        print(
            f"every catalog translates all {counted} messages: {', '.join(found)}; no unmarked text"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
