"""Login and logout: the form, the session user, and the failed-login limit."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import gettext, lazy_gettext, ngettext
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from mwl.admin.users import USERNAME_MAX_LENGTH, authenticate, get_user, normalize_username
from mwl.store.models import User
from web.store import db_session, state

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

LOGIN_FAILED = lazy_gettext("Unknown user name or wrong password.")


@dataclass(frozen=True)
class LoginUser(UserMixin):
    """The logged-in user as the views see it: a detached copy, never an ORM row."""

    key: int
    username: str
    role: str
    # Changes when the password does, so a password change ends the other sessions.
    stamp: str

    @classmethod
    def from_user(cls, user: User) -> LoginUser:
        """Copy what the views need out of the ORM row."""
        return cls(user.id, user.username, user.role, password_stamp(user.password_hash))

    def get_id(self) -> str:
        """Flask-Login's session identifier: database key and password stamp."""
        return f"{self.key}.{self.stamp}"


def password_stamp(password_hash: str) -> str:
    """A short digest of the stored hash; reveals nothing usable about the password."""
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()[:16]


class LoginForm(FlaskForm):
    """User name and password (with Flask-WTF's CSRF token)."""

    username = StringField(
        lazy_gettext("User name"), validators=[DataRequired(), Length(max=USERNAME_MAX_LENGTH)]
    )
    password = PasswordField(
        lazy_gettext("Password"), validators=[DataRequired(), Length(max=1024)]
    )


def init_login(app: Flask) -> None:
    """Attach Flask-Login to ``app``: unauthenticated page requests go to the login form."""
    manager = LoginManager(app)
    manager.login_view = "auth.login"
    manager.login_message = lazy_gettext("Please log in to see this page.")
    # Made text when flashed, so in the language of the request that needs the login.
    manager.localize_callback = str
    manager.login_message_category = "info"
    # The session is dropped when the client's address or browser changes.
    manager.session_protection = "strong"
    manager.user_loader(_load_user)


def _load_user(identifier: str) -> LoginUser | None:
    key, _, stamp = identifier.partition(".")
    if not key.isdigit():
        return None
    user = get_user(db_session(), int(key))
    if user is None or password_stamp(user.password_hash) != stamp:
        return None
    return LoginUser.from_user(user)


def _fresh_session() -> None:
    # The language picked in the header is a preference, not a credential: keeping
    # it means logging in or out does not switch the page back to English.
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang


def safe_next(target: str | None) -> str:
    """``target`` when it is a path on this site, else the worklist (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("worklist.day")


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Show the login form; on POST check the credentials and start the session."""
    next_url = safe_next(request.args.get("next"))
    if current_user.is_authenticated and request.method == "GET":
        return redirect(next_url)
    form = LoginForm()
    if not form.validate_on_submit():
        return render_template("login.html", form=form, next_url=next_url)

    username = normalize_username(form.username.data or "")
    limiter = state().limiter
    key = (username, request.remote_addr or "")
    wait = limiter.retry_after(key)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        logger.warning("login refused for %r from %s: too many failures", username, key[1])
        error = ngettext(
            "Too many failed logins. Try again in %(num)s minute.",
            "Too many failed logins. Try again in %(num)s minutes.",
            minutes,
        )
        page = render_template("login.html", form=form, next_url=next_url, error=error)
        return page, 429, {"Retry-After": str(int(wait) + 1)}

    user = authenticate(db_session(), username, form.password.data or "")
    if user is None:
        limiter.record_failure(key)
        logger.warning("failed login for %r from %s", username, key[1])
        return render_template("login.html", form=form, next_url=next_url, error=LOGIN_FAILED)

    limiter.reset(key)
    # A fresh session at login: nothing from before (an attacker-planted session
    # included) carries over into the authenticated one, but the chosen language.
    _fresh_session()
    session.permanent = True  # expires after PERMANENT_SESSION_LIFETIME without use
    login_user(LoginUser.from_user(user))
    logger.info("user %r logged in from %s", user.username, key[1])
    return redirect(next_url)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session (POST only, with CSRF token, so no link can log anyone out)."""
    if current_user.is_authenticated:
        logger.info("user %r logged out", current_user.username)
    logout_user()
    _fresh_session()
    flash(gettext("You are logged out."), "info")
    return redirect(url_for("auth.login"))
