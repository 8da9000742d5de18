"""The API token page: each user lists, creates and revokes their own tokens; admins all."""

from __future__ import annotations

import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import Length

from mwl.admin.tokens import NAME_MAX_LENGTH, TokenError, create_token, list_tokens, revoke_token
from mwl.admin.users import Role
from web import audit_events
from web.api import PREFIX
from web.confirm import confirmation_page, confirmed
from web.roles import has_role
from web.store import db_session, rollback_session, writer

logger = logging.getLogger(__name__)

bp = Blueprint("tokens", __name__, url_prefix="/account/tokens")


class TokenForm(FlaskForm):
    """A new token's name (with Flask-WTF's CSRF token)."""

    name = StringField(
        _l("What the token is for"),
        validators=[Length(max=NAME_MAX_LENGTH)],
        description=_l("For example: RIS import script. Optional."),
    )


def _page(form: TokenForm, new_token: str | None = None, status: int = 200) -> ResponseReturnValue:
    is_admin = has_role(Role.ADMIN)
    tokens = list_tokens(db_session(), None if is_admin else current_user.username)
    page = render_template(
        "tokens.html",
        form=form,
        tokens=tokens,
        new_token=new_token,
        show_user=is_admin,
        api_root=request.url_root.rstrip("/") + PREFIX,
    )
    return page, status


@bp.get("")
@login_required
def index() -> ResponseReturnValue:
    """The user's tokens (an admin's page lists everyone's) and the form for a new one."""
    return _page(TokenForm())


@bp.post("")
@login_required
def create() -> ResponseReturnValue:
    """Create a token for the logged-in user and show it, this once."""
    form = TokenForm()
    if not form.validate_on_submit():
        return _page(form, status=400)
    try:
        with writer().begin() as session:
            token = create_token(session, current_user.username, form.name.data or "")
            audit_events.token_changed(
                session, current_user.username, current_user.username, "API token created"
            )
    except TokenError:
        form.name.errors = [_("Line breaks, tabs and other control characters are not allowed.")]
        return _page(form, status=400)
    logger.info("user %r created an API token", current_user.username)
    # The request's read session began before this change (loading the user): end
    # its snapshot, so that the list shows the new token.
    rollback_session()
    # Rendered, not redirected: a redirect would have to carry the token in the
    # session cookie. The page is never cached (Cache-Control: no-store).
    return _page(TokenForm(formdata=None), new_token=token)


@bp.post("/<int:key>/revoke")
@login_required
def revoke(key: int) -> ResponseReturnValue:
    """Revoke one token: the user's own, or anyone's for an admin."""
    # The CSRF token of each revoke button is checked by CSRFProtect for every POST.
    owner = None if has_role(Role.ADMIN) else current_user.username
    if not confirmed():
        listed = {t.key: t for t in list_tokens(db_session(), owner)}
        token = listed.get(key)
        if token is None:
            abort(404, description=_("There is no such token (revoked already?)."))
        return confirmation_page(
            title=_("Revoke this token?"),
            question=_(
                "Scripts that use the token are refused from now on, on every broker"
                " sharing this database."
            ),
            button=_("Revoke the token"),
            back_url=url_for("tokens.index"),
            details=[
                _("Token: %(name)s", name=token.name or token.key),
                _("User: %(user)s", user=token.username),
            ],
            undo=_(
                "This cannot be undone: the token's value is not stored. Create a new"
                " token and give it to the script instead."
            ),
        )
    try:
        with writer().begin() as session:
            info = revoke_token(session, key, username=owner)
            audit_events.token_changed(
                session, current_user.username, info.username, "API token revoked"
            )
    except TokenError:
        abort(404, description=_("There is no such token (revoked already?)."))
    logger.info("user %r revoked API token %s of %r", current_user.username, key, info.username)
    flash(_("Token %(name)s revoked.", name=info.name or info.key), "info")
    return redirect(url_for("tokens.index"))
