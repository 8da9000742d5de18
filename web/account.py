"""The change-password page, and the rule that a weak password must be changed first.

Kept apart from :mod:`web.auth` (which logs people in and out): this module only
listens for a successful login (Flask-Login's ``user_logged_in`` signal) and looks
at each page request, so the login code stays as it is.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required, login_user, user_logged_in
from flask_wtf import FlaskForm
from wtforms import PasswordField
from wtforms.validators import EqualTo, InputRequired, Length

from mwl.admin import sessions
from mwl.admin.passwords import MAX_LENGTH, MIN_LENGTH, PasswordRule, WeakPasswordError
from mwl.admin.users import authenticate, get_user, require_new_password_if_weak, set_password
from web.auth import LoginUser
from web.store import db_session, writer

logger = logging.getLogger(__name__)

bp = Blueprint("account", __name__, url_prefix="/account")

# What the form's fields accept at most: a bound on what is hashed, well above the
# policy's maximum so that a too-long password gets the policy's message.
_FIELD_MAX = 1024

# The pages a user who must change their password can still reach.
_OPEN_ENDPOINTS = frozenset(
    {"account.password", "auth.login", "auth.logout", "i18n.choose", "status.healthz", "static"}
)


def rule_message(error: WeakPasswordError) -> str:
    """The policy's refusal in the reader's language."""
    messages = {
        PasswordRule.TOO_SHORT: _("Use at least %(num)s characters.", num=MIN_LENGTH),
        PasswordRule.TOO_LONG: _("Use at most %(num)s characters.", num=MAX_LENGTH),
        PasswordRule.REPEATED: _("A password of one repeated character is too easy to guess."),
        PasswordRule.COMMON: _("This password is too common. Choose another one."),
        PasswordRule.CONTAINS_USERNAME: _("The password must not contain your user name."),
    }
    return messages.get(error.rule, error.reason)


# Flask-WTF ships no types, so FlaskForm is Any to mypy; a new module may not join the
# ratchet list in pyproject.toml that relaxes this for the older forms.
class PasswordForm(FlaskForm):  # type: ignore[misc]
    """Current password, new password twice (with Flask-WTF's CSRF token)."""

    # Not named "password": that is the login form's field, which the login hook reads.
    # InputRequired, not DataRequired: a password of spaces is checked by the policy.
    current_password = PasswordField(
        _l("Current password"), validators=[InputRequired(), Length(max=_FIELD_MAX)]
    )
    new_password = PasswordField(
        _l("New password"),
        validators=[InputRequired(), Length(max=_FIELD_MAX)],
        description=_l(
            "At least %(min)s characters; spaces and any letters, digits or signs are"
            " allowed. A common password or one containing your user name is refused.",
            min=MIN_LENGTH,
        ),
    )
    repeat_password = PasswordField(
        _l("New password again"),
        validators=[
            InputRequired(),
            EqualTo("new_password", message=_l("The two new passwords are not the same.")),
        ],
    )


def init_password_change(app: Flask) -> None:
    """Mark weak passwords at login and send their owners to the change form."""
    user_logged_in.connect(_check_password_at_login, app)
    app.before_request(_require_new_password)


def _check_password_at_login(_app: Flask, user: Any, **_extra: Any) -> None:
    # The only moment the clear-text password is known is the login request itself.
    if request.endpoint != "auth.login":
        return
    password = request.form.get("password", "")
    with writer().begin() as session:
        if require_new_password_if_weak(session, user.key, password):
            logger.info("user %r must change a password that fails the policy", user.username)


def _must_change() -> bool:
    if not current_user.is_authenticated:
        return False
    user = get_user(db_session(), current_user.key)
    return user is not None and user.must_change_password


def _require_new_password() -> ResponseReturnValue | None:
    # The API authenticates by token, not by password, and has its own blueprint.
    if request.endpoint in _OPEN_ENDPOINTS or request.blueprint == "api":
        return None
    if _must_change():
        return redirect(url_for("account.password"))
    return None


def _page(form: PasswordForm, status: int = 200) -> ResponseReturnValue:
    return render_template("account_password.html", form=form, must_change=_must_change()), status


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password() -> ResponseReturnValue:
    """Show the form; on POST check the current password and set the new one."""
    form = PasswordForm()
    if not form.validate_on_submit():
        return _page(form, 400 if request.method == "POST" else 200)
    username = current_user.username
    if authenticate(db_session(), username, form.current_password.data or "") is None:
        form.current_password.errors = [_("The current password is wrong.")]
        logger.warning("user %r gave a wrong current password on the password page", username)
        return _page(form, 400)
    try:
        with writer().begin() as changes:
            user = set_password(changes, username, form.new_password.data or "")
            # set_password ends every session of the user, this one too: it goes on
            # under a new session id, the others stay ended.
            session_id = sessions.start_session(changes, user.id)
            changed = LoginUser(user.id, user.username, user.role, session_id)
    except WeakPasswordError as error:
        form.new_password.errors = [rule_message(error)]
        return _page(form, 400)
    login_user(changed)
    logger.info("user %r changed their password", username)
    flash(_("Your password has been changed."), "info")
    return redirect(url_for("worklist.day"))
