"""Who may do what: the role a view needs, checked after login."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import abort
from flask_babel import gettext
from flask_login import current_user, login_required

from mwl.admin.users import Role

P = ParamSpec("P")
R = TypeVar("R")

# Each role includes the ones before it.
_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}


def has_role(role: Role) -> bool:
    """Whether the logged-in user holds ``role`` or a higher one."""
    if not current_user.is_authenticated:
        return False
    try:
        held = Role(current_user.role)
    except ValueError:
        return False
    return _RANK[held] >= _RANK[role]


def role_required(role: Role) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a view: log in first (redirect), then 403 without ``role``."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            if not has_role(role):
                abort(403, description=gettext("This needs the %(role)s role.", role=role.value))
            return view(*args, **kwargs)

        wrapped: Callable[P, R] = login_required(checked)
        return wrapped

    return decorate
