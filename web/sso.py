"""OpenID Connect login (authorization code with PKCE) through Authlib's Flask client.

The provider says who the user is; :mod:`mwl.admin.external` turns the role claim
into a role and keeps the user row; the session is then the same database session
as after a password login (:func:`web.auth.start_login`). Logout ends that session
and, where the provider has an ``end_session_endpoint``, the provider's too
(RP-initiated logout, with the ID token as hint).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import (
    Blueprint,
    Flask,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext

from mwl.admin import external
from mwl.config import Settings
from mwl.errors import UserError
from web.auth import NO_ROLE, LoginForm, safe_next, start_login
from web.store import state, writer

logger = logging.getLogger(__name__)

bp = Blueprint("sso", __name__)

CLIENT = "oidc"
# Flask session keys: where to go after the login, and the ID token for the logout.
_NEXT = "oidc_next"
_ID_TOKEN = "oidc_id_token"
# Seconds for each request to the provider (metadata, token, keys, userinfo).
_TIMEOUT = 10

SSO_FAILED = lazy_gettext("Single sign-on failed. Try again, or ask your administrator.")


def init_sso(app: Flask, settings: Settings) -> None:
    """Register the OpenID Connect client and its views when ``oidc_issuer`` is set."""
    if not settings.oidc_issuer:
        return
    tls: dict[str, Any] = {}
    if settings.oidc_ca:
        # requests lets REQUESTS_CA_BUNDLE in the environment win over a session's
        # own CA file (psf/requests#3829); the configured CA must win, so the
        # environment is not consulted (nor are its proxy variables).
        tls = {"verify": settings.oidc_ca, "trust_env": False}
    oauth = OAuth(app)
    oauth.register(
        CLIENT,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret or None,
        server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": settings.oidc_scopes,
            "code_challenge_method": "S256",
            **tls,
            "default_timeout": _TIMEOUT,
        },
    )
    app.register_blueprint(bp)


def enabled() -> bool:
    """Whether this app logs in through OpenID Connect (the login page shows the link)."""
    return "sso.start" in current_app.view_functions


def _client() -> Any:
    return current_app.extensions["authlib.integrations.flask_client"].create_client(CLIENT)


@bp.get("/login/oidc")
def start() -> ResponseReturnValue:
    """Send the browser to the provider, with state, nonce and a PKCE challenge."""
    session[_NEXT] = safe_next(request.args.get("next"))
    try:
        return _client().authorize_redirect(url_for("sso.callback", _external=True))  # type: ignore[no-any-return]
    except (AuthlibBaseError, requests.RequestException, ValueError) as exc:
        logger.warning("OpenID Connect provider not reachable: %s", exc)
        return _refused(SSO_FAILED, 502)


@bp.get("/login/oidc/callback")
def callback() -> ResponseReturnValue:
    """Take the provider's answer: code for tokens, ID token checked, role from the claim."""
    settings = state().settings
    client = _client()
    try:
        token = client.authorize_access_token()
        claims: dict[str, Any] = dict(token.get("userinfo") or {})
        if _claim(claims, settings.oidc_role_claim) is None:
            # Some providers (Keycloak by default) put groups only in userinfo.
            claims.update(client.userinfo(token=token))
    except (AuthlibBaseError, requests.RequestException, ValueError, KeyError) as exc:
        logger.warning("OpenID Connect login failed: %s", exc)
        return _refused(SSO_FAILED, 400)
    username = str(claims.get(settings.oidc_username_claim) or "")
    role = external.role_for(
        _values(_claim(claims, settings.oidc_role_claim)), settings.oidc_role_map
    )
    try:
        with writer().begin() as changes:
            user = external.external_login(changes, username, external.OIDC, role)
            if user is not None:
                user_id, name, role_value = user.id, user.username, user.role
    except UserError as exc:
        logger.warning("OpenID Connect login refused: %s", exc)
        return _refused(SSO_FAILED, 403)
    if user is None:
        logger.warning("OpenID Connect login refused for %r: no role in the claim", username)
        return _refused(NO_ROLE, 403)
    next_url = session.get(_NEXT)
    start_login(user_id, name, role_value)
    session[_ID_TOKEN] = token.get("id_token", "")
    logger.info("user %r logged in through OpenID Connect", name)
    return redirect(safe_next(next_url))


def logout_url(id_token: str | None) -> str | None:
    """Where the provider ends its own session (RP-initiated logout), or None.

    None when this login was no OpenID Connect one, or the provider has no
    ``end_session_endpoint``; the provider comes back to the login page.
    """
    if not id_token or not enabled():
        return None
    client = _client()
    try:
        metadata = client.load_server_metadata()
    except (AuthlibBaseError, requests.RequestException, ValueError) as exc:
        logger.warning("OpenID Connect provider not reachable at logout: %s", exc)
        return None
    if not metadata.get("end_session_endpoint"):
        return None
    result = client.create_logout_url(
        post_logout_redirect_uri=url_for("auth.login", _external=True), id_token_hint=id_token
    )
    return str(result["url"])


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    # A dotted path reaches into nested claims (Keycloak's realm_access.roles).
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _values(claim: Any) -> list[str]:
    if isinstance(claim, str):
        return [claim]
    if isinstance(claim, list | tuple):
        return [str(item) for item in claim if isinstance(item, str | int)]
    return []


def _refused(message: object, status: int) -> ResponseReturnValue:
    return render_template(
        "login.html", form=LoginForm(), next_url=url_for("worklist.day"), error=message
    ), status
