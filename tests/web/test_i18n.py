"""English and German: the page's language, and a German catalog that covers every message."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "i18n.py"
PO = REPO / "web" / "translations" / "de" / "LC_MESSAGES" / "messages.po"
FIX = (
    "Run `python tools/i18n.py update`, translate the entries listed (fill msgstr, drop"
    " the fuzzy flag) in web/translations/de/LC_MESSAGES/messages.po, then"
    " `python tools/i18n.py compile`; `python tools/i18n.py check` must then pass."
)
DAY = dt.date(2026, 11, 21)


@pytest.fixture(autouse=True)
def today(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("web.worklist.local_today", lambda: dt.date(2026, 11, 24))


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def test_browser_language_german_gives_german_pages(client, user, password, add_order):
    add_order("ACC1", dt.datetime.combine(DAY, dt.time(7, 45)), birth_date="19640312")
    add_order("ACC2", dt.datetime.combine(DAY, dt.time(9)), patient_id="P2")
    add_order(
        "ACC2",
        dt.datetime.combine(DAY, dt.time(9)),
        patient_id="P2",
        control="CA",
        order_status="CA",
    )
    german = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}

    login = client.get("/?date=2026-11-21", headers=german, follow_redirects=True).text
    assert '<html lang="de">' in login
    assert "Bitte melden Sie sich an, um diese Seite zu sehen." in login
    for text in ("<h1>Anmelden</h1>", ">Benutzername</label>", ">Passwort</label>", "Sprache"):
        assert text in login, text

    refused = client.post("/login", data={"username": user, "password": "x"}, headers=german)
    assert "Unbekannter Benutzername oder falsches Passwort." in refused.text
    empty = client.post("/login", data={"username": "", "password": ""}, headers=german)
    assert "Dieses Feld wird benötigt." in empty.text  # WTForms' own German catalog

    client.post("/login", data={"username": user, "password": password}, headers=german)
    page = client.get("/?date=2026-11-21", headers=german).text
    assert '<html lang="de">' in page
    for text in (
        "Arbeitsliste",
        '<time datetime="2026-11-21">Samstag, 21. November 2026</time>',
        ">Uhrzeit<span",
        '<th scope="col">Geburtsdatum</th>',
        ">Untersuchung</a></th>",
        ">Modalität</a></th>",
        "62 Jahre",
        "weiblich",
        '<td class="accession">ACC1</td>',
        '<span class="status">Geplant</span>',
        '<span class="status">Storniert</span>',
        "2 geplante Untersuchungen",
        ">Abmelden</button>",
        "(Betrachter)",
        "Patientenname, Patienten-ID oder Accession-Nr.",
    ):
        assert text in page, text
    assert "Scheduled" not in page and "Log out" not in page

    bad = client.get("/?date=21.11.2026", headers=german)
    assert bad.status_code == 400
    assert "<h1>400 Ungültige Anfrage</h1>" in bad.text
    assert "Das Datum muss ein Kalenderdatum im Format JJJJ-MM-TT sein" in bad.text
    missing = client.get("/no-such-page", headers=german)
    assert missing.status_code == 404 and "<h1>404 Nicht gefunden</h1>" in missing.text
    assert "Diese Seite gibt es nicht." in missing.text


def test_language_chosen_in_the_header_outlasts_login_and_logout(csrf_app, user, password):
    client = csrf_app.test_client()
    english = {"Accept-Language": "en"}
    page = client.get("/login", headers=english).text
    assert '<html lang="en">' in page and "<h1>Log in</h1>" in page

    refused = client.post("/language", data={"lang": "de", "next": "/login"}, headers=english)
    assert refused.status_code == 400  # a form like any other: no token, no change
    assert '<html lang="en">' in client.get("/login", headers=english).text

    chosen = client.post(
        "/language",
        data={"lang": "de", "next": "/login", "csrf_token": csrf_token(page)},
        headers=english,
    )
    assert chosen.status_code == 302 and chosen.headers["Location"] == "/login"
    page = client.get("/login", headers=english).text
    assert '<html lang="de">' in page and "<h1>Anmelden</h1>" in page
    assert '<option value="de" selected>Deutsch</option>' in page

    logged_in = client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": csrf_token(page)},
        headers=english,
    )
    assert logged_in.status_code == 302
    day = client.get("/?date=2026-11-21", headers=english).text
    assert '<html lang="de">' in day and "Für diesen Tag ist nichts geplant." in day

    client.post("/logout", data={"csrf_token": csrf_token(day)}, headers=english)
    after = client.get("/login", headers=english).text
    assert "Sie sind abgemeldet." in after and '<html lang="de">' in after

    back = client.post(
        "/language",
        data={"lang": "en", "next": "/login", "csrf_token": csrf_token(after)},
        headers=english,
    )
    assert back.status_code == 302
    assert "<h1>Log in</h1>" in client.get("/login", headers={"Accept-Language": "de"}).text


# --- The catalog: every message of the page has a German translation -------------------

KEYWORDS = {
    **DEFAULT_KEYWORDS,
    "_l": None,
    "lazy_gettext": None,
    "lazy_ngettext": (1, 2),
    "lazy_pgettext": ((1, "c"), 2),
}


# Where messages are marked: the web page, and the core's declaration of the stored
# fields (mwl/worklist/fields.py: the item page's labels, marked N_).
SOURCE_DIRS = (("web",), ("mwl", "worklist"))


def in_sources(root: Path, path: str) -> bool:
    """Whether extraction walks ``path``: a source directory, inside one or on the way."""
    parts = Path(path).relative_to(root).parts
    return any(parts[: len(d)] == d or d[: len(parts)] == parts for d in SOURCE_DIRS)


def source_messages(root: Path = REPO) -> Catalog:
    """Every message marked in web/ and mwl/worklist/, as babel.cfg configures."""
    with (root / "babel.cfg").open(encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config)
    catalog = Catalog()
    found = extract_from_dir(
        str(root),
        method_map,
        options_map,
        keywords=KEYWORDS,
        directory_filter=lambda path: in_sources(root, path),
    )
    for filename, lineno, message, _comments, context in found:
        catalog.add(message, None, [(filename, lineno)], context=context)
    return catalog


def key(message: Message) -> tuple[str, str | None]:
    msgid = message.id[0] if isinstance(message.id, tuple | list) else message.id
    return str(msgid), message.context


def translated(message: Message) -> bool:
    strings = message.string if isinstance(message.string, tuple | list) else (message.string,)
    return not message.fuzzy and all(strings)


def served(catalog: Catalog) -> dict[tuple[str, str | None], object]:
    """What a compiled catalog answers: msgid -> translation (plural forms as a tuple)."""
    result: dict[tuple[str, str | None], object] = {}
    for message in catalog:
        if message.id and translated(message):
            string = message.string
            result[key(message)] = tuple(string) if isinstance(string, tuple | list) else string
    return result


def test_every_message_has_a_german_translation():
    sources = source_messages()
    assert len(sources) > 100  # the extraction found the page's messages at all
    with PO.open("rb") as po:
        german = read_po(po, locale="de")
    problems = []
    for message in sources:
        if not message.id:
            continue
        msgid, context = key(message)
        entry = german.get(msgid, context=context)
        where = f"{message.locations[0][0]}:{message.locations[0][1]}"
        if entry is None:
            problems.append(f"missing       {msgid!r} ({where})")
        elif entry.fuzzy:
            problems.append(f"fuzzy         {msgid!r} ({where})")
        elif not translated(entry):
            problems.append(f"untranslated  {msgid!r} ({where})")
    for message, errors in german.check():
        problems += [f"placeholders  {key(message)[0]!r}: {error}" for error in errors]
    if problems:
        pytest.fail(
            f"{len(problems)} message(s) of the web page lack a German translation:\n"
            + "\n".join(problems)
            + f"\n{FIX}",
            pytrace=False,
        )


def test_committed_mo_matches_the_po():
    with PO.open("rb") as po:
        german = read_po(po, locale="de")
    compiled = io.BytesIO()
    write_mo(compiled, german)
    compiled.seek(0)
    with PO.with_suffix(".mo").open("rb") as mo:
        committed = read_mo(mo)
    if served(committed) != served(read_mo(compiled)):
        pytest.fail(f"messages.mo is older than messages.po. {FIX}", pytrace=False)
    assert served(committed)[("Worklist", None)] == "Arbeitsliste"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mwl_i18n_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@dataclass
class ToolRun:
    returncode: int
    stdout: str


@pytest.fixture
def run_tool(capsys: pytest.CaptureFixture[str]) -> Callable[..., ToolRun]:
    """Run ``tools/i18n.py`` in this process (quicker than a new interpreter each time)."""
    tool = load_tool()

    def run(*args: str, root: Path) -> ToolRun:
        capsys.readouterr()
        code = tool.main([*args, "--root", str(root)])
        return ToolRun(code, capsys.readouterr().out)

    return run


def test_tool_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, str(TOOL), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "{extract,update,compile,check}" in done.stdout


def test_tool_extracts_updates_compiles_and_checks(tmp_path, run_tool):
    shutil.copy(REPO / "babel.cfg", tmp_path / "babel.cfg")
    (tmp_path / "web" / "templates").mkdir(parents=True)
    views = tmp_path / "web" / "views.py"
    views.write_text(
        "from flask_babel import gettext as _, lazy_gettext as _l, ngettext\n"
        "LABEL = _l('Birth date')\n"
        "def f(n):\n"
        "    return _('Old sentence'), ngettext('%(num)s step', '%(num)s steps', n)\n",
        encoding="utf-8",
    )
    page = tmp_path / "web" / "templates" / "page.html"
    page.write_text("<h1>{{ _('Worklist') }}</h1>\n", encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "ignored.py").write_text("_('Not part of the page')\n")

    assert run_tool("update", "--lang", "de", root=tmp_path).returncode == 0
    po = tmp_path / "web" / "translations" / "de" / "LC_MESSAGES" / "messages.po"
    first = run_tool("check", root=tmp_path)
    assert first.returncode == 1
    lines = first.stdout.splitlines()
    assert lines[0] == "web/translations/de/LC_MESSAGES/messages.po (German): 5 problem(s)"
    assert "  untranslated  'Birth date'  (web/views.py:2)" in lines
    assert "  untranslated  '%(num)s step'  (web/views.py:4)" in lines
    assert "  untranslated  'Worklist'  (web/templates/page.html:1)" in lines
    assert any(line.startswith("  stale-mo") for line in lines)
    assert "Not part of the page" not in first.stdout
    assert lines[-1].startswith("Fix: python tools/i18n.py update, then translate")

    text = po.read_text(encoding="utf-8")
    for msgid, german in (("Birth date", "Geburtsdatum"), ("Worklist", "Arbeitsliste")):
        text = text.replace(f'msgid "{msgid}"\nmsgstr ""', f'msgid "{msgid}"\nmsgstr "{german}"')
    text = text.replace('msgid "Old sentence"\nmsgstr ""', 'msgid "Old sentence"\nmsgstr "Alt"')
    text = text.replace(
        'msgstr[0] ""\nmsgstr[1] ""',
        'msgstr[0] "%(count)s Schritt"\nmsgstr[1] "%(num)s Schritte"',
    )
    po.write_text(text, encoding="utf-8")
    assert run_tool("compile", root=tmp_path).returncode == 0
    wrong = run_tool("check", root=tmp_path)
    assert wrong.returncode == 1
    assert "format        '%(num)s step'" in wrong.stdout and "'count'" in wrong.stdout

    po.write_text(text.replace("%(count)s Schritt", "%(num)s Schritt"), encoding="utf-8")
    stale = run_tool("check", root=tmp_path)
    assert stale.returncode == 1
    assert "  stale-mo      web/translations/de/LC_MESSAGES/messages.mo differs" in stale.stdout
    assert run_tool("compile", root=tmp_path).returncode == 0
    done = run_tool("check", root=tmp_path)
    assert done.returncode == 0, done.stdout
    assert done.stdout == "every catalog translates all 4 messages: de, de_CH; no unmarked text\n"
    swiss = tmp_path / "web" / "translations" / "de_CH" / "LC_MESSAGES" / "messages.mo"
    with swiss.open("rb") as mo:
        assert served(read_mo(mo))[("Birth date", None)] == "Geburtsdatum"

    # A new message appears, an old one goes: translations of the others stay.
    page.write_text("<h1>{{ _('Worklist') }}</h1>{{ _('New sentence') }}\n", encoding="utf-8")
    views.write_text(views.read_text().replace("_('Old sentence'), ", ""), encoding="utf-8")
    assert "missing       'New sentence'" in run_tool("check", root=tmp_path).stdout
    assert run_tool("update", root=tmp_path).returncode == 0
    text = po.read_text(encoding="utf-8")
    assert 'msgid "New sentence"\nmsgstr ""' in text
    assert 'msgstr "Arbeitsliste"' in text and 'msgstr "Geburtsdatum"' in text
    assert "Old sentence" not in text
    assert run_tool("update", root=tmp_path).stdout.endswith("is up to date\n")

    assert run_tool("extract", root=tmp_path).returncode == 0
    pot = (tmp_path / "web" / "translations" / "messages.pot").read_text(encoding="utf-8")
    assert 'msgid "New sentence"' in pot and 'msgid_plural "%(num)s steps"' in pot

    # Text outside {{ _() }} fails the check, in a template and in a view.
    page.write_text("<h1>{{ _('Worklist') }}</h1>\n<p title='Shown day'>Nothing today</p>\n")
    views.write_text(views.read_text() + "def g():\n    flash('Saved.')\n", encoding="utf-8")
    unmarked = run_tool("check", root=tmp_path)
    assert unmarked.returncode == 1
    assert "text not marked for translation: 3" in unmarked.stdout
    assert "  web/templates/page.html:2  'Shown day'" in unmarked.stdout
    assert "  web/templates/page.html:2  'Nothing today'" in unmarked.stdout
    assert "  web/views.py:6  'Saved.'" in unmarked.stdout


def test_swiss_german_is_german_without_sharp_s():
    with PO.open("rb") as po:
        german = served(read_po(po, locale="de"))
    with (REPO / "web/translations/de_CH/LC_MESSAGES/messages.mo").open("rb") as mo:
        swiss = served(read_mo(mo))
    assert swiss.keys() == german.keys()
    assert german[("Request Entity Too Large", None)] == "Anfrage zu groß"
    assert swiss[("Request Entity Too Large", None)] == "Anfrage zu gross"
    assert not any("ß" in str(text) for text in swiss.values())
