"""The page's language: English or German, from the user's choice or the browser's."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, redirect, request, session
from flask.typing import ResponseReturnValue
from flask_babel import Babel

from web.auth import safe_next

LANGUAGES = ("en", "de")
TRANSLATIONS = Path(__file__).with_name("translations")

bp = Blueprint("i18n", __name__)


def select_locale() -> str:
    """The language chosen on the page, else the best the browser accepts, else English."""
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return str(chosen)
    return request.accept_languages.best_match(LANGUAGES) or "en"


def init_i18n(app: Flask) -> None:
    """Attach Flask-Babel; templates get ``_()``/``ngettext()`` and ``current_language``."""
    Babel(app, locale_selector=select_locale, default_translation_directories=str(TRANSLATIONS))
    app.jinja_env.globals["current_language"] = select_locale
    app.jinja_env.globals["languages"] = LANGUAGES


@bp.post("/language")
def choose() -> ResponseReturnValue:
    """Remember the language picked in the page header (a form, so CSRF-protected)."""
    lang = request.form.get("lang", "")
    if lang in LANGUAGES:
        session["lang"] = lang
    return redirect(safe_next(request.form.get("next")))
