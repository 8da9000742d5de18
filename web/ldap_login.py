"""LDAP / Active Directory login: a bind as the user, then the groups, through ldap3.

The login form tries the local accounts first; a name that is no local account is
tried here when ``ldap_url`` is set. The bind checks the password at the directory
(nothing is stored here); the groups found are mapped to a role by
:mod:`mwl.admin.external`, which also keeps the user row. Wrong passwords are
counted and delayed by the login limits exactly as local ones (web.auth does it).
"""

from __future__ import annotations

import logging
import math
import ssl
from dataclasses import dataclass

from ldap3 import NONE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn
from sqlalchemy.orm import Session

from mwl.admin import external
from mwl.admin.users import find_user
from mwl.config import Settings
from mwl.errors import UserError
from mwl.store.models import User

logger = logging.getLogger(__name__)

# LDAP result code of a wrong password or unknown DN (RFC 4511 4.1.9).
_INVALID_CREDENTIALS = 49
_MAX_GROUPS = 1000


class DirectoryUnavailable(Exception):
    """The directory could not be asked (down, TLS refused, timeout): no verdict."""


@dataclass(frozen=True)
class Verdict:
    """The directory's answer: the user row, or why not.

    ``bound`` without ``user``: the password was right, but no group of the user is
    mapped to a role (the user row, if any, has been removed).
    """

    user: User | None
    bound: bool


def directory_login(session: Session, settings: Settings, username: str, password: str) -> Verdict:
    """Bind as ``username`` and keep its user row; the caller commits.

    Parameters
    ----------
    session
        A writer unit of work; the caller commits.
    settings
        The ``ldap_*`` settings (``ldap_url`` set).
    username, password
        As typed on the login form (the name normalized).

    Raises
    ------
    DirectoryUnavailable
        The directory did not answer the bind or the searches.
    """
    local = find_user(session, username)
    if local is not None and local.external_source != external.LDAP:
        # A local account's password is never sent to the directory.
        return Verdict(None, bound=False)
    groups = directory_groups(settings, username, password)
    if groups is None:
        return Verdict(None, bound=False)
    role = external.role_for(groups, settings.ldap_group_role_map)
    try:
        user = external.external_login(session, username, external.LDAP, role)
    except UserError as exc:
        logger.warning("LDAP login refused: %s", exc)
        return Verdict(None, bound=False)
    return Verdict(user, bound=True)


def directory_groups(settings: Settings, username: str, password: str) -> list[str] | None:
    """Bind as ``username``; its group DNs, or None when the directory refuses the bind."""
    # An empty password would be an unauthenticated bind (RFC 4513 5.1.2), which
    # many directories accept: it proves nothing.
    if not password or not username:
        return None
    user_dn = settings.ldap_user_dn_template.format(username=escape_rdn(username))
    connection = Connection(
        _server(settings),
        user=user_dn,
        password=password,
        receive_timeout=_seconds(settings),
        read_only=True,
        raise_exceptions=False,
    )
    try:
        connection.open()
        if settings.ldap_start_tls and not connection.start_tls():
            raise DirectoryUnavailable(f"StartTLS refused: {connection.result}")
        if not connection.bind():
            if connection.result.get("result") == _INVALID_CREDENTIALS:
                return None
            raise DirectoryUnavailable(f"bind failed: {connection.result.get('description')}")
        return _groups(connection, settings, username, user_dn)
    except LDAPException as exc:
        raise DirectoryUnavailable(str(exc)) from exc
    finally:
        connection.unbind()
        # ldap3 leaves the socket of a refused connection open (unbind skips a
        # connection that never opened).
        leftover = getattr(connection, "socket", None)
        if leftover is not None:
            leftover.close()


def _seconds(settings: Settings) -> int:
    # ldap3 packs its socket timeouts as whole seconds.
    return max(1, math.ceil(settings.ldap_timeout_seconds))


def _server(settings: Settings) -> Server:
    tls = None
    if settings.ldap_url.startswith("ldaps://") or settings.ldap_start_tls:
        tls = Tls(
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
            ca_certs_file=settings.ldap_ca or None,
        )
    return Server(
        settings.ldap_url,
        get_info=NONE,
        tls=tls,
        connect_timeout=_seconds(settings),
    )


def _groups(connection: Connection, settings: Settings, username: str, user_dn: str) -> list[str]:
    groups: list[str] = []
    if settings.ldap_user_search_base:
        # The user's own entry: its real DN (an AD bind name may be user@domain) and memberOf.
        connection.search(
            settings.ldap_user_search_base,
            settings.ldap_user_filter.format(username=escape_filter_chars(username)),
            attributes=["memberOf"],
            size_limit=2,
        )
        if len(connection.response or []) >= 1:
            entry = connection.response[0]
            user_dn = entry.get("dn", user_dn)
            groups.extend(str(dn) for dn in entry.get("attributes", {}).get("memberOf", []))
    if settings.ldap_group_search_base:
        connection.search(
            settings.ldap_group_search_base,
            settings.ldap_group_filter.format(user_dn=escape_filter_chars(user_dn)),
            attributes=[],
            size_limit=_MAX_GROUPS,
        )
        groups.extend(str(entry["dn"]) for entry in connection.response or [] if "dn" in entry)
    return groups
