"""The users page: admins list, create, disable, enable and reset accounts and set roles.

The rules are :mod:`mwl.admin.users`' (and so the password policy of ``mwl user``);
this module adds the page, the confirmation of what locks someone out, and the
audit of every change, in the internal trail and, when ATNA audit is on, as a
110113 Security Alert (110136 for a role, 110137 for the other attributes).

Accounts that log in through LDAP or OpenID Connect get their role from the
directory at every login: the page shows it and offers no change.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session
from wtforms import PasswordField, SelectField, StringField
from wtforms.validators import EqualTo, InputRequired, Length, ValidationError

from mwl.admin.passwords import MIN_LENGTH, PasswordRule, WeakPasswordError, password_problem
from mwl.admin.users import (
    USERNAME_MAX_LENGTH,
    Role,
    add_user,
    enabled_admins,
    find_user,
    get_user,
    list_users,
    reset_password,
    set_disabled,
    set_role,
)
from mwl.audit import messages as audit_messages
from mwl.errors import UserError
from mwl.operations.audit import record_event
from mwl.store.models import User
from web.account import rule_message as own_rule_message
from web.roles import role_required
from web.store import db_session, rollback_session, state, writer

logger = logging.getLogger(__name__)

bp = Blueprint("users", __name__, url_prefix="/admin/users")

_FIELD_MAX = 1024
_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}


def role_label(role: str) -> str:
    """A role's name in the reader's language."""
    labels = {
        Role.VIEWER.value: _("viewer"),
        Role.EDITOR.value: _("editor"),
        Role.ADMIN.value: _("admin"),
    }
    return labels.get(role, role)


def rule_message(error: WeakPasswordError) -> str:
    """The policy's refusal of a password an admin typed for someone else."""
    if error.rule is PasswordRule.CONTAINS_USERNAME:
        return _("The password must not contain the user name.")
    return own_rule_message(error)


def _role_choices() -> list[tuple[str, str]]:
    return [(role.value, role_label(role.value)) for role in Role]


def _password_fields() -> tuple[Any, Any]:
    new = PasswordField(
        _l("Password"),
        validators=[InputRequired(), Length(max=_FIELD_MAX)],
        description=_l(
            "At least %(min)s characters; a common password or one containing the user"
            " name is refused. The user must choose a new one at the first login.",
            min=MIN_LENGTH,
        ),
    )
    repeat = PasswordField(
        _l("Password again"),
        validators=[
            InputRequired(),
            EqualTo("password", message=_l("The two passwords are not the same.")),
        ],
    )
    return new, repeat


class _PolicyChecked:
    """Checks the password against the policy with the other fields, so all errors show at once."""

    def account_name(self) -> str:
        raise NotImplementedError

    def validate_password(self, field: Any) -> None:
        problem = password_problem(field.data or "", self.account_name())
        if problem is not None:
            raise ValidationError(rule_message(problem))


class NewUserForm(_PolicyChecked, FlaskForm):  # type: ignore[misc]
    """A new local account: name, role and a first password the user changes."""

    username = StringField(
        _l("User name"), validators=[InputRequired(), Length(max=USERNAME_MAX_LENGTH)]
    )
    role = SelectField(_l("Role"), default=Role.VIEWER.value)
    password, repeat_password = _password_fields()

    def account_name(self) -> str:
        return str(self.username.data or "")


class ResetForm(_PolicyChecked, FlaskForm):  # type: ignore[misc]
    """An admin's new password for an account."""

    class Meta:
        # One form per row, prefixed; CSRFProtect checks the page's token on every POST.
        csrf = False

    password, repeat_password = _password_fields()
    username = ""  # the account's, set by the view

    def account_name(self) -> str:
        return self.username


class RoleForm(FlaskForm):  # type: ignore[misc]
    """Another role for an account."""

    class Meta:
        csrf = False

    role = SelectField(_l("Role"))


def _new_user_form() -> NewUserForm:
    form = NewUserForm(prefix="new")
    form.role.choices = _role_choices()
    return form


def _page(
    form: NewUserForm | None = None,
    *,
    reset: tuple[int, ResetForm] | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    users = list_users(db_session())
    role_forms = {}
    for user in users:
        role_form = RoleForm(prefix=f"u{user.id}", formdata=None, role=user.role)
        role_form.role.choices = _role_choices()
        role_forms[user.id] = role_form
    resets = {user.id: ResetForm(prefix=f"r{user.id}", formdata=None) for user in users}
    if reset is not None:
        resets[reset[0]] = reset[1]
    page = render_template(
        "users.html",
        users=users,
        form=form or _new_user_form(),
        role_forms=role_forms,
        resets=resets,
        role_label=role_label,
    )
    return page, status


def _user_or_404(key: int) -> User:
    user = get_user(db_session(), key)
    if user is None:
        abort(404, description=_("There is no such user (removed already?)."))
    return user


def _audit(session: Session, username: str, action: str, text: str, **changes: Any) -> None:
    """The change in the internal trail and, with ATNA audit on, as a Security Alert."""
    record_event(
        session,
        current_user.username,
        action,
        subject=f"user:{username}",
        changes={name: (old, new) for name, (old, new) in changes.items()},
    )
    auditor = state().auditor
    if auditor is not None and auditor.enabled:
        reporter = audit_messages.Participant(
            current_user.username, True, address=request.remote_addr or ""
        )
        auditor.record(
            session,
            audit_messages.user_change(
                auditor.source, reporter, username, roles=action == "user-role", text=text
            ),
        )


def _would_leave_no_admin(session: Session, user: User, *, role: str | None = None) -> bool:
    """Whether the change takes the admin role from the last enabled admin."""
    if user.role != Role.ADMIN.value or user.disabled:
        return False
    if role is not None and role == Role.ADMIN.value:
        return False
    return enabled_admins(session) <= 1


def _confirm(
    user: User, action: str, question: str, consequence: str, fields: dict[str, str]
) -> ResponseReturnValue:
    """Ask before a change that locks someone out or takes rights away (no script needed)."""
    page = render_template(
        "users_confirm.html",
        user=user,
        action=action,
        question=question,
        consequence=consequence,
        fields=fields,
    )
    return page, 200


def _confirmed() -> bool:
    return request.form.get("confirmed") == "yes"


@bp.get("")
@role_required(Role.ADMIN)
def index() -> ResponseReturnValue:
    """Every account with its role and state, and the form for a new one."""
    return _page()


@bp.post("")
@role_required(Role.ADMIN)
def create() -> ResponseReturnValue:
    """Create a local account; its first password must be changed at the first login."""
    form = _new_user_form()
    if not form.validate_on_submit():
        return _page(form, status=400)
    name = form.username.data or ""
    try:
        with writer().begin() as session:
            user = add_user(session, name, form.password.data or "", form.role.data)
            user.must_change_password = True
            _audit(
                session,
                user.username,
                "user-create",
                f"created ({user.role})",
                role=(None, user.role),
            )
            created = user.username
    except WeakPasswordError as error:
        form.password.errors = [rule_message(error)]
        return _page(form, status=400)
    except UserError:
        taken = find_user(db_session(), name) is not None
        form.username.errors = [
            _("This user name is taken.")
            if taken
            else _("A user name has no spaces or control characters.")
        ]
        return _page(form, status=400)
    logger.info("admin %r created user %r", current_user.username, created)
    flash(_("User %(name)s created.", name=created), "info")
    return redirect(url_for("users.index"))


@bp.post("/<int:key>/role")
@role_required(Role.ADMIN)
def change_role(key: int) -> ResponseReturnValue:
    """Give an account another role; taking a role away is confirmed first."""
    user = _user_or_404(key)
    form = RoleForm(prefix=f"u{key}")
    form.role.choices = _role_choices()
    if not form.validate_on_submit():
        abort(400)
    if user.external_source is not None:
        abort(409, description=_("This account gets its role from the directory."))
    new_role = str(form.role.data)
    if new_role == user.role:
        return redirect(url_for("users.index"))
    if _would_leave_no_admin(db_session(), user, role=new_role):
        flash(_("The last admin cannot lose the admin role."), "error")
        return redirect(url_for("users.index"), 303)
    lowered = _RANK[Role(new_role)] < _RANK[Role(user.role)]
    if lowered and not _confirmed():
        return _confirm(
            user,
            url_for("users.change_role", key=key),
            _(
                "Change the role of %(name)s from %(old)s to %(new)s?",
                name=user.username,
                old=role_label(user.role),
                new=role_label(new_role),
            ),
            _("%(name)s is logged out everywhere and loses what the old role allowed.")
            % {"name": user.username},
            {form.role.name: new_role},
        )
    old_role = user.role
    with writer().begin() as session:
        changed = set_role(session, user.username, new_role)
        _audit(
            session,
            changed.username,
            "user-role",
            f"role: {old_role} -> {new_role}",
            role=(old_role, new_role),
        )
    logger.info("admin %r gave %r the role %s", current_user.username, user.username, new_role)
    flash(
        _("%(name)s now has the role %(role)s.", name=user.username, role=role_label(new_role)),
        "info",
    )
    return redirect(url_for("users.index"), 303)


@bp.post("/<int:key>/disable")
@role_required(Role.ADMIN)
def disable(key: int) -> ResponseReturnValue:
    """Disable a local account (after a confirmation): no login, no API token."""
    user = _user_or_404(key)
    if user.external_source is not None:
        abort(409, description=_("This account is disabled at its directory."))
    if user.id == current_user.key:
        flash(_("You cannot disable your own account."), "error")
        return redirect(url_for("users.index"), 303)
    if _would_leave_no_admin(db_session(), user):
        flash(_("The last admin cannot be disabled."), "error")
        return redirect(url_for("users.index"), 303)
    if user.disabled:
        return redirect(url_for("users.index"), 303)
    if not _confirmed():
        return _confirm(
            user,
            url_for("users.disable", key=key),
            _("Disable the account %(name)s?", name=user.username),
            _(
                "%(name)s is logged out everywhere and can no longer log in or use API"
                " tokens until the account is enabled again.",
                name=user.username,
            ),
            {},
        )
    with writer().begin() as session:
        set_disabled(session, user.username, True)
        _audit(session, user.username, "user-disable", "disabled", disabled=(False, True))
    logger.info("admin %r disabled user %r", current_user.username, user.username)
    flash(_("The account %(name)s is disabled.", name=user.username), "info")
    return redirect(url_for("users.index"), 303)


@bp.post("/<int:key>/enable")
@role_required(Role.ADMIN)
def enable(key: int) -> ResponseReturnValue:
    """Enable a disabled account again (its tokens work again too)."""
    user = _user_or_404(key)
    if user.external_source is not None or not user.disabled:
        return redirect(url_for("users.index"), 303)
    with writer().begin() as session:
        set_disabled(session, user.username, False)
        _audit(session, user.username, "user-enable", "enabled", disabled=(True, False))
    logger.info("admin %r enabled user %r", current_user.username, user.username)
    flash(_("The account %(name)s is enabled.", name=user.username), "info")
    return redirect(url_for("users.index"), 303)


@bp.post("/<int:key>/password")
@role_required(Role.ADMIN)
def reset(key: int) -> ResponseReturnValue:
    """Set a new password, which the user must change at the next login."""
    user = _user_or_404(key)
    if user.external_source is not None:
        abort(409, description=_("This account's password is kept by its directory."))
    form = ResetForm(prefix=f"r{key}")
    form.username = user.username
    if not form.validate_on_submit():
        return _page(reset=(key, form), status=400)
    try:
        with writer().begin() as session:
            reset_password(session, user.username, form.password.data or "")
            # The trail says that it was reset, never what to.
            _audit(session, user.username, "user-password", "password reset", password=("", ""))
    except WeakPasswordError as error:
        form.password.errors = [rule_message(error)]
        rollback_session()
        return _page(reset=(key, form), status=400)
    logger.info("admin %r reset the password of %r", current_user.username, user.username)
    flash(
        _(
            "New password set for %(name)s, who must change it at the next login.",
            name=user.username,
        ),
        "info",
    )
    return redirect(url_for("users.index"), 303)
