"""The admin web page: application factory wiring settings, database, login and blueprints."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import gettext, lazy_gettext
from flask_login import AnonymousUserMixin
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from mwl.admin.login_limits import LoginPolicy
from mwl.admin.sessions import SessionPolicy
from mwl.audit.auditor import Auditor
from mwl.config import Settings
from mwl.store.engine import is_outage, make_engine, make_session_factory
from web import (
    account,
    admin,
    alerts,
    api,
    auth,
    daylist,
    dicomweb,
    display,
    health,
    i18n,
    items,
    messages,
    params,
    scanners,
    sso,
    status,
    users,
    worklist,
)
from web import tokens as token_page
from web.proxies import TrustedProxies
from web.request_ids import RequestIds
from web.store import (
    ChainReprocessor,
    DicomWebService,
    Hl7Describer,
    Hl7Reprocessor,
    ItemLister,
    QueryPreviewer,
    WebState,
    close_session,
    rollback_session,
)

logger = logging.getLogger(__name__)
# Only the composition root (mwl.cli) configures handlers; a library stays quiet.
logger.addHandler(logging.NullHandler())


def create_app(
    settings: Settings,
    session_factory: sessionmaker[Session] | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    writer_factory: sessionmaker[Session] | None = None,
    hl7_reprocessor: Hl7Reprocessor | None = None,
    chain_reprocessor: ChainReprocessor | None = None,
    query_previewer: QueryPreviewer | None = None,
    hl7_describer: Hl7Describer | None = None,
    item_lister: ItemLister | None = None,
    listener_status: health.ListenerStatus | None = None,
    auditor: Auditor | None = None,
    dicomweb_service: DicomWebService | None = None,
) -> Flask:
    """Build the admin web application.

    Parameters
    ----------
    settings
        The broker's settings (secret key, secure cookies, database URL).
    session_factory
        Where each request gets its read session (``make_session_factory(engine)``).
        When None, the app builds its own engine from ``settings.database_url``; it is
        kept in ``app.extensions["mwl"].owned_engine`` for the caller to dispose.
    config
        Flask configuration applied last, e.g. ``{"WTF_CSRF_ENABLED": False}`` in tests.
    writer_factory
        Sessions for changes (edits, new orders, settings). When None, a writer
        factory on the same engine as ``session_factory``.
    hl7_reprocessor, chain_reprocessor, query_previewer, hl7_describer
        Services of the HL7 and DICOM adapters, lent by the composition root
        (see :mod:`web.store`); the pages that need them say so when they are absent.
    item_lister
        What a modality receives for an item (``mwl.dicom.listing.item_attributes``
        with the settings bound), for the item page; without it the page shows the
        stored values only.
    listener_status
        Whether each listener (HL7, DICOM) is bound, for ``/health`` (:mod:`web.health`).
    dicomweb_service
        MWL-RS and MPPS-RS on the DICOM adapter's pipelines, for ``/dicomweb``
        (:mod:`web.dicomweb`); without it those resources answer 503.

    Returns
    -------
    Flask
        The WSGI application, ready for :class:`web.server.WebServer`.
    """
    app = Flask(__name__)
    sessions = session_policy(settings)
    app.config.update(
        # Signs the cookie that carries the session id, the CSRF token and the
        # language. Without a configured key, one that dies with the process: safe,
        # only tiresome (everyone logs in again after a restart), and brokers sharing
        # a database need the same key to accept each other's cookies.
        SECRET_KEY=settings.web_secret_key or secrets.token_hex(32),
        SESSION_COOKIE_NAME="mwl_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Served over HTTPS, cookies never travel in the clear.
        SESSION_COOKIE_SECURE=settings.web_secure_cookies or bool(settings.web_tls_cert),
        # The cookie expires with the absolute lifetime; the idle timeout and every
        # revocation are enforced on the server (mwl.admin.sessions).
        PERMANENT_SESSION_LIFETIME=sessions.lifetime,
        # The token lives in the signed session cookie, which ends with the browser
        # session; a time limit would only break the logout button of a console left
        # open all day.
        WTF_CSRF_TIME_LIMIT=None,
        # Only small forms are posted.
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    if config:
        app.config.update(config)

    owned_engine = None
    if session_factory is None:
        owned_engine = make_engine(settings.database_url)
        session_factory = make_session_factory(owned_engine)
    if writer_factory is None:
        writer_factory = make_session_factory(session_factory.kw["bind"], writer=True)
    app.extensions["mwl"] = WebState(
        settings=settings,
        session_factory=session_factory,
        login_policy=login_policy(settings),
        session_policy=sessions,
        writer_factory=writer_factory,
        owned_engine=owned_engine,
        hl7_reprocessor=hl7_reprocessor,
        chain_reprocessor=chain_reprocessor,
        query_previewer=query_previewer,
        hl7_describer=hl7_describer,
        item_lister=item_lister,
        listener_status=listener_status,
        auditor=auditor,
        dicomweb=dicomweb_service,
    )

    csrf = CSRFProtect(app)
    # The API authenticates by bearer token only, never by the session cookie, so a
    # cross-site form cannot act through it.
    csrf.exempt(api.bp)
    csrf.exempt(dicomweb.bp)
    auth.init_login(app)
    account.init_password_change(app)
    i18n.init_i18n(app)
    display.register_filters(app)
    app.register_blueprint(auth.bp)
    sso.init_sso(app, settings)
    app.register_blueprint(i18n.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(worklist.bp)
    app.register_blueprint(daylist.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(scanners.bp)
    app.register_blueprint(items.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(dicomweb.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(alerts.bp)
    app.register_blueprint(token_page.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(users.bp)

    # Lets the navigation show links only to pages that exist.
    app.jinja_env.globals["url_endpoints"] = app.view_functions

    app.url_value_preprocessor(params.reject_keys_out_of_range)
    app.teardown_appcontext(close_session)
    app.after_request(_security_headers)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(SQLAlchemyError, _database_error)
    app.register_error_handler(Exception, _server_error)
    app.wsgi_app = RequestIds(app.wsgi_app)  # type: ignore[method-assign]
    if settings.web_trusted_proxies:
        app.wsgi_app = TrustedProxies(app.wsgi_app, settings.web_trusted_proxies)  # type: ignore[method-assign]
    return app


def session_policy(settings: Settings) -> SessionPolicy:
    """The session lifetimes of ``settings``."""
    return SessionPolicy(
        idle=dt.timedelta(minutes=settings.web_session_idle_minutes),
        lifetime=dt.timedelta(hours=settings.web_session_lifetime_hours),
    )


def login_policy(settings: Settings) -> LoginPolicy:
    """The failed-login delays of ``settings``."""
    return LoginPolicy(
        free_per_user=settings.web_login_failures_per_user,
        free_per_address=settings.web_login_failures_per_address,
        first_delay=dt.timedelta(seconds=settings.web_login_first_delay_seconds),
        max_delay=dt.timedelta(seconds=settings.web_login_max_delay_seconds),
    )


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    # No inline script or style anywhere, so the strictest policy costs nothing:
    # scripts are files under /static only (the day list's live updates).
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none';"
        " base-uri 'none'; form-action 'self'",
    )
    if request.is_secure:
        # Over HTTPS (directly, or from a trusted proxy that says so): browsers keep
        # to HTTPS for a year. Not over plain HTTP: browsers ignore it there (RFC 6797 8.1).
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if response.mimetype in {"text/html", "application/json"}:
        # Pages show patient data: the back button after logout must not show them
        # again from the cache.
        response.headers["Cache-Control"] = "no-store"
    return response


def _csrf_error(error: CSRFError) -> tuple[str, int]:
    return (
        render_template(
            "error.html",
            title=gettext("Form expired"),
            message=gettext(
                "The form was not accepted (missing or expired security token)."
                " Reload the page and try again."
            ),
        ),
        400,
    )


# Error page titles in the reader's language (werkzeug's names are English only).
_ERROR_NAMES = {
    400: lazy_gettext("Bad Request"),
    403: lazy_gettext("Forbidden"),
    404: lazy_gettext("Not Found"),
    405: lazy_gettext("Method Not Allowed"),
    413: lazy_gettext("Request Entity Too Large"),
    429: lazy_gettext("Too Many Requests"),
    503: lazy_gettext("Service Unavailable"),
}
_DEFAULT_MESSAGES = {
    400: lazy_gettext("The request was not understood."),
    403: lazy_gettext("You do not have the permission to see this page."),
    404: lazy_gettext("This page does not exist. Check the address, or go back to the worklist."),
    405: lazy_gettext("This page does not accept this kind of request."),
    413: lazy_gettext("The data sent is too large."),
    429: lazy_gettext("Too many requests. Wait a moment and try again."),
}


def _error_message(error: HTTPException) -> str:
    # Our own descriptions are translated where they are raised; werkzeug's stock
    # ones are English, so they are replaced by ours.
    if error.description and error.description != type(error).description:
        return error.description
    return str(_DEFAULT_MESSAGES.get(error.code or 0, error.description or ""))


def _http_error(error: HTTPException) -> ResponseReturnValue:
    if error.code is None or error.code < 400:
        return error.get_response()
    if api.is_api_request():
        return api.http_error(error)
    return (
        render_template(
            "error.html",
            title=f"{error.code} {_ERROR_NAMES.get(error.code, error.name)}",
            message=_error_message(error),
        ),
        error.code,
    )


def _database_error(error: SQLAlchemyError) -> ResponseReturnValue:
    # The database restarting or failing over is an outage, not a bug: 503, one line
    # without a traceback, and the page says to try again. Other database errors are
    # bugs (500, logged with their traceback).
    if not is_outage(error):
        return _server_error(error)
    logger.warning("web request not served: the database is unavailable (%s)", type(error).__name__)
    with contextlib.suppress(SQLAlchemyError):
        rollback_session()
    # The page must not ask the database who is logged in (flask_login's cache of
    # the request's user): it shows no navigation then.
    g._login_user = AnonymousUserMixin()
    return _http_error(
        ServiceUnavailable(
            description=gettext(
                "The worklist database cannot be reached at the moment. Try again in a few seconds."
            )
        )
    )


def _server_error(error: Exception) -> ResponseReturnValue:
    # Logged once with its traceback; the page shows none (it could hold patient data).
    logger.exception("unexpected error while serving a web request")
    rollback_session()
    if api.is_api_request():
        return api.server_error()
    return (
        render_template(
            "error.html",
            title=gettext("500 Internal Server Error"),
            message=gettext("Something went wrong on the server. The error has been logged."),
        ),
        500,
    )
