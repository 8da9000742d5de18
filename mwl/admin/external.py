"""Accounts that log in elsewhere (OpenID Connect, LDAP): their role and their user row.

The protocol adapters (web.sso, web.ldap_login) say who logged in and which claim
values or groups they have; this module turns those into a role and keeps the
local user row in step, so sessions, audit and the admin page work as for local
accounts. The row is made at the first login, its role recomputed at every one;
it has no usable password, so the password form and the password policy do not
apply to it. A login whose claims or groups no longer grant a role removes the row
(its sessions and API tokens with it): what the provider no longer allows does not
keep working here.

A local account is never taken over: a provider's user with a local account's name
is refused, so whoever controls the provider cannot become the local admin.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from mwl.admin.sessions import end_user_sessions
from mwl.admin.users import Role, find_user, valid_username
from mwl.errors import UserError
from mwl.store.models import User

OIDC = "oidc"
LDAP = "ldap"

# Not a hash mwl.admin.users.check_password accepts: no password matches it.
NO_PASSWORD = "!external"

_RANK = {role: rank for rank, role in enumerate(Role)}


def role_for(values: Iterable[str], role_map: Iterable[tuple[str, str]]) -> Role | None:
    """The highest role that any of ``values`` (claim values, group DNs) is mapped to.

    Parameters
    ----------
    values
        What the provider said: the role claim's values or the directory groups.
    role_map
        ``(value, role)`` pairs from the settings; values compared case-insensitively
        (directory DNs and group names are).

    Returns
    -------
    Role | None
        None when no value is mapped: the user may not log in.
    """
    granted = {value.strip().casefold() for value in values}
    best: Role | None = None
    for value, role in role_map:
        if value.strip().casefold() in granted:
            candidate = Role(role)
            if best is None or _RANK[candidate] > _RANK[best]:
                best = candidate
    return best


def external_login(session: Session, username: str, source: str, role: Role | None) -> User | None:
    """Create or update the row of an external user who just logged in; the caller commits.

    Parameters
    ----------
    session
        A writer unit of work.
    username
        The name the provider gave (normalized like local names).
    source
        :data:`OIDC` or :data:`LDAP`.
    role
        From :func:`role_for`; None when the provider grants none.

    Returns
    -------
    User | None
        The flushed row; None when ``role`` is None (the row, if any, is then removed
        and its sessions ended).

    Raises
    ------
    UserError
        An invalid name, or a name that is a local account or comes from the other
        source.
    """
    name = valid_username(username)
    user = find_user(session, name)
    if user is not None and user.external_source != source:
        raise UserError(f"user {name!r} is not an account of {source}", name)
    if role is None:
        if user is not None:
            end_user_sessions(session, user.id)
            session.delete(user)
            session.flush()
        return None
    if user is None:
        user = User(
            username=name, password_hash=NO_PASSWORD, role=role.value, external_source=source
        )
        session.add(user)
    elif user.role != role.value:
        # As for a role changed on the admin page: no session keeps the old role.
        user.role = role.value
        end_user_sessions(session, user.id)
    session.flush()
    return user
