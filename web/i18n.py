"""The page's language and locale: English or German, from the user's choice or the browser's.

The language (``en``, ``de``) picks the catalog; the locale adds the region the
browser names for that language, which sets the form of dates and times (Babel's
CLDR data: ``de-CH`` and ``de-DE`` write 03.12.2026, ``en-GB`` 3 Dec 2026, ``en``
Dec 3, 2026) and, for Switzerland, the catalog ``de_CH``: the German one without
ß, which Swiss orthography writes ss (``tools/i18n.py compile`` derives it).
"""

from __future__ import annotations

from pathlib import Path

from babel import Locale, UnknownLocaleError
from flask import Blueprint, Flask, current_app, redirect, request, session
from flask.typing import ResponseReturnValue
from flask_babel import Babel
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from web.auth import safe_next

LANGUAGES = ("en", "de")
# What the switch in the header offers: a language, or German as written in Switzerland.
CHOICES = ("en", "de", "de-CH")
TRANSLATIONS = Path(__file__).with_name("translations")
# The choice outlives the session (logout, a closed browser): a preference, not a secret.
COOKIE = "mwl_lang"
COOKIE_MAX_AGE = 365 * 24 * 3600

bp = Blueprint("i18n", __name__)


def _chosen() -> str | None:
    for value in (session.get("lang"), request.cookies.get(COOKIE)):
        if value in CHOICES:
            return str(value)
    return None


def select_language() -> str:
    """The language chosen on the page, else the best the browser accepts, else English."""
    chosen = _chosen()
    if chosen is not None:
        return chosen.split("-")[0]
    return request.accept_languages.best_match(LANGUAGES) or "en"


def _region() -> str | None:
    """The region of the language in force, as chosen or as the browser first names it."""
    chosen = _chosen()
    if chosen is not None and "-" in chosen:
        return chosen.split("-")[1]
    language = select_language()
    for value, _quality in request.accept_languages:
        parts = value.replace("_", "-").split("-")
        if parts[0].lower() == language and len(parts) > 1 and len(parts[1]) == 2:
            return parts[1].upper()
    return None


def select_locale() -> str:
    """The locale of the page in Babel's form: ``de_CH``, ``en_GB``, ``de``, ``en``."""
    language = select_language()
    region = _region()
    if region:
        try:
            return str(Locale(language, region))
        except UnknownLocaleError:
            pass
    return language


def html_language() -> str:
    """The language of the text, for ``<html lang>``: ``de-CH`` for the Swiss catalog.

    The region of another locale changes only the dates' form, not the text.
    """
    locale = select_locale()
    return "de-CH" if locale == "de_CH" else select_language()


def current_choice() -> str:
    """Which option of the switch is in force (``de-CH`` only when Swiss German is)."""
    locale = html_language()
    return locale if locale in CHOICES else select_language()


def here() -> str:
    """Where the switch comes back to: this page with its query string.

    A page shown in answer to a POST (a form with errors) comes back as the GET of
    the same address when there is one, else as the page the form was on.
    """
    if request.method == "GET":
        query = request.query_string.decode("utf-8", "replace")
        return request.path + (f"?{query}" if query else "")
    adapter = current_app.url_map.bind_to_environ(request.environ)
    try:
        adapter.match(request.path, method="GET")
        return request.path
    except (NotFound, MethodNotAllowed, RequestRedirect):
        pass
    referrer = request.referrer or ""
    host = request.host_url.rstrip("/")
    if referrer.startswith(host + "/"):
        return referrer[len(host) :]
    return ""


def init_i18n(app: Flask) -> None:
    """Attach Flask-Babel; templates get ``_()``/``ngettext()`` and the switch's helpers."""
    Babel(app, locale_selector=select_locale, default_translation_directories=str(TRANSLATIONS))
    app.jinja_env.globals["current_language"] = select_language
    app.jinja_env.globals["html_language"] = html_language
    app.jinja_env.globals["current_choice"] = current_choice
    app.jinja_env.globals["language_here"] = here
    app.jinja_env.globals["languages"] = LANGUAGES


@bp.post("/language")
def choose() -> ResponseReturnValue:
    """Remember the language picked in the page header (a form, so CSRF-protected)."""
    lang = request.form.get("lang", "")
    response = redirect(safe_next(request.form.get("next")))
    if lang in CHOICES:
        session["lang"] = lang
        response.set_cookie(
            COOKIE,
            lang,
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
        )
    return response
