"""Login and logout: the form, the server-side session, and the failed-login delays.

Flask-Login keeps, in the signed cookie, only a random session id; the session
itself is a database row (:mod:`mwl.admin.sessions`), so logging out, a password
or role change and a removed account end it on every broker at once, and a copied
cookie is worth nothing afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
from sqlalchemy.orm import Session
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from mwl.admin import login_limits, sessions
from mwl.admin.users import USERNAME_MAX_LENGTH, authenticate, normalize_username
from mwl.audit import messages as audit_messages
from mwl.store.models import utcnow
from web.ldap_login import DirectoryUnavailable, directory_login
from web.store import db_session, state, writer

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

LOGIN_FAILED = lazy_gettext("Unknown user name or wrong password.")
DIRECTORY_DOWN = lazy_gettext("The user directory cannot be reached. Try again later.")
NO_ROLE = lazy_gettext("Your account has no role on this broker. Ask your administrator.")


@dataclass(frozen=True)
class LoginUser(UserMixin):
    """The logged-in user as the views see it: a detached copy, never an ORM row."""

    key: int
    username: str
    role: str
    # The random id in the cookie; the database has only its hash.
    session_id: str = field(repr=False)

    def get_id(self) -> str:
        """Flask-Login's session identifier: the opaque session id, nothing else."""
        return self.session_id


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
    # Not "strong": it does nothing for a permanent session, and tying a login to
    # an address would log out users behind proxies that change. Sessions end on
    # the server instead.
    manager.session_protection = None
    manager.user_loader(_load_user)


def _load_user(identifier: str) -> LoginUser | None:
    policy = state().session_policy
    now = utcnow()
    found = sessions.session_user(db_session(), identifier, policy, now)
    if found is None:
        return None
    if sessions.needs_touch(found, policy, now):
        with writer().begin() as changes:
            sessions.touch_session(changes, found.session_key, now)
    return LoginUser(found.user_key, found.username, found.role, identifier)


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
    address = request.remote_addr or ""
    policy = state().login_policy
    wait = login_limits.retry_after(db_session(), username, address, policy)
    if wait > 0:
        with writer().begin() as changes:
            login_limits.record_refusal(changes, username, address, wait)
            _audit_login(changes, username, address, login=True, success=False)
        logger.warning("login refused for %r from %s: too many failures", username, address)
        return _delayed(form, next_url, wait)

    user = authenticate(db_session(), username, form.password.data or "")
    if user is None and state().settings.ldap_url:
        try:
            with writer().begin() as changes:
                verdict = directory_login(
                    changes, state().settings, username, form.password.data or ""
                )
                found = verdict.user
                user_row = (found.id, found.username, found.role) if found else None
        except DirectoryUnavailable as exc:
            # No verdict on the password, so not counted as a failure.
            logger.warning("LDAP directory not reachable: %s", exc)
            page = render_template("login.html", form=form, next_url=next_url, error=DIRECTORY_DOWN)
            return page, 503
        if user_row is not None:
            with writer().begin() as changes:
                login_limits.record_success(changes, username)
            start_login(*user_row)
            logger.info("user %r logged in through LDAP from %s", username, address)
            return redirect(next_url)
        if verdict.bound:
            logger.warning("LDAP login refused for %r: no group grants a role", username)
            page = render_template("login.html", form=form, next_url=next_url, error=NO_ROLE)
            return page, 403
    if user is None:
        with writer().begin() as changes:
            login_limits.record_failure(changes, username, address, policy)
            _audit_login(changes, username, address, login=True, success=False)
        logger.warning("failed login for %r from %s", username, address)
        return render_template("login.html", form=form, next_url=next_url, error=LOGIN_FAILED)

    with writer().begin() as changes:
        login_limits.record_success(changes, username)
    start_login(user.id, user.username, user.role)
    logger.info("user %r logged in from %s", user.username, address)
    return redirect(next_url)


def start_login(user_id: int, username: str, role: str) -> None:
    """Open the database session of a user who just proved who they are, and its cookie.

    The same for every way in: the password form, OpenID Connect, LDAP.
    """
    with writer().begin() as changes:
        # Logins are rare enough to carry the clean-up of what has expired.
        sessions.purge_expired(changes, state().session_policy)
        login_limits.purge_forgotten(changes, state().login_policy)
        session_id = sessions.start_session(changes, user_id)
        # Every way in (password, OpenID Connect, LDAP) is audited here, once.
        _audit_login(changes, username, request.remote_addr or "", login=True, success=True)
    # A fresh session at login: nothing from before (an attacker-planted session
    # included) carries over into the authenticated one, but the chosen language.
    _fresh_session()
    session.permanent = True  # the cookie expires with the absolute lifetime
    login_user(LoginUser(user_id, username, role, session_id))


def _audit_login(
    changes: Session, username: str, address: str, *, login: bool, success: bool
) -> None:
    """ATNA 110114 User Authentication, in the transaction that records the login."""
    auditor = state().auditor
    if auditor is not None and auditor.enabled:
        auditor.record(
            changes,
            audit_messages.user_authentication(
                auditor.source, username, address, login=login, success=success
            ),
        )


def _delayed(form: LoginForm, next_url: str, wait: float) -> ResponseReturnValue:
    # The same answer whether the password was right, wrong or the user unknown.
    minutes = max(1, round(wait / 60))
    error = ngettext(
        "Too many failed logins. Try again in %(num)s minute.",
        "Too many failed logins. Try again in %(num)s minutes.",
        minutes,
    )
    page = render_template("login.html", form=form, next_url=next_url, error=error)
    return page, 429, {"Retry-After": str(int(wait) + 1)}


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session (POST only, with CSRF token, so no link can log anyone out)."""
    # Imported here: web.sso builds on this module's login.
    from web.sso import logout_url

    if current_user.is_authenticated:
        with writer().begin() as changes:
            sessions.end_session(changes, current_user.get_id())
            _audit_login(
                changes, current_user.username, request.remote_addr or "", login=False, success=True
            )
        logger.info("user %r logged out", current_user.username)
    provider_logout = logout_url(session.get("oidc_id_token"))
    logout_user()
    _fresh_session()
    if provider_logout is None:
        flash(gettext("You are logged out."), "info")
        return redirect(url_for("auth.login"))
    # A page, not a redirect: the CSP's form-action 'self' of the page whose form
    # was posted also covers where the POST is redirected to. A refresh is a plain
    # navigation, so it goes to the provider, which comes back to the login page.
    return render_template(
        "logout_provider.html",
        provider_logout=provider_logout,
        refresh_seconds=1,
        refresh_url=provider_logout,
    )
