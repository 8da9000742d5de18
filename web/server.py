"""Serve the admin web app on cheroot, plain HTTP or HTTPS, in a background thread.

cheroot (CherryPy's production WSGI server) is used rather than waitress because
waitress has no TLS. One server serves both cases, so plain HTTP and HTTPS answer
through the same code; bench/web_server.py measured the change.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from mwl.ratelog import RateLimitedLog
from mwl.tls import ReloadingContext

logger = logging.getLogger(__name__)
# cheroot reports what clients cause (failed handshakes, broken connections): any
# client can cause them in a loop, so each kind is logged once a minute at most.
_client_errors = RateLimitedLog(logger)

# Seconds a connection may stay silent (TLS handshake, request, keep-alive) before
# it is closed, so that a client that connects and says nothing frees its thread.
_TIMEOUT_SECONDS = 10


class ReloadingTlsAdapter(BuiltinSSLAdapter):
    """cheroot's TLS adapter on :class:`mwl.tls.ReloadingContext`: BCP 195, reloaded files.

    Each new connection gets the current context, so a renewed certificate is in use
    from the next connection on, without a restart.

    The handshake is left to the first read, which happens on a worker thread:
    cheroot's own adapter shakes hands on the thread that accepts connections, where
    one client that connects and sends nothing holds up every other client until
    the timeout.
    """

    def __init__(self, context: ReloadingContext) -> None:
        # The base class loads the files into a default context of its own; ours
        # replaces it, so its constructor is skipped on purpose.
        self.certificate = str(context.files.cert)
        self.private_key = str(context.files.key)
        self.certificate_chain = None
        self.ciphers = None
        self.private_key_password = None
        self._reloading = context
        self._context = context.current()

    @property
    def context(self) -> ssl.SSLContext:
        """The context of the next connection (reloaded when the files changed)."""
        return self._reloading.current()

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:  # pragma: no cover - cheroot API
        self._context = context

    def wrap(self, sock: Any) -> tuple[Any, dict[str, str]]:
        """Wrap ``sock`` for TLS; the handshake happens at the first read."""
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}


class _Server(wsgi.Server):
    """cheroot's WSGI server, but a new connection waits for its first bytes unattended.

    cheroot hands a just-accepted connection straight to a worker thread, which
    then waits up to the timeout for the request (or the TLS handshake): a few
    clients that connect and send nothing would occupy every worker. Here a new
    connection is parked in cheroot's selector, as a keep-alive one is between
    requests, and reaches a worker only once it has sent something; a silent one
    is closed after the timeout.
    """

    # Waiting connections kept open (parked new ones count too); beyond it cheroot
    # answers with "Connection: close". The selector (epoll) holds many cheaply.
    keep_alive_conn_limit = 200

    def process_conn(self, conn: Any) -> None:
        if conn.last_used is None:  # never seen by the selector: just accepted
            self.put_conn(conn)
            return
        super().process_conn(conn)

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """cheroot's messages into logging (not stderr), rate-limited; tracebacks at DEBUG.

        At WARNING at most: what cheroot reports is about connections (a client that
        hangs up mid-handshake is an "unhandled error" to it); errors of the app
        itself are logged by the app.
        """
        text = str(msg)
        _client_errors.log(min(level, logging.WARNING), text[:48], "web server: %s", text)
        if traceback:
            logger.debug("web server: traceback", exc_info=True)


class WebServer:
    """The admin page on cheroot, in a daemon thread.

    Parameters
    ----------
    app
        The WSGI application (``web.create_app(...)``).
    host, port
        Where to listen; port 0 picks a free port (read it back from ``address``).
    threads
        Worker threads answering requests.
    tls
        The certificate to serve HTTPS with; None serves plain HTTP.
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        threads: int = 8,
        tls: ReloadingContext | None = None,
    ) -> None:
        self._server = _Server(
            (host, port),
            app,
            numthreads=threads,
            server_name="mwl",
            timeout=_TIMEOUT_SECONDS,
            shutdown_timeout=5,
        )
        if tls is not None:
            self._server.ssl_adapter = ReloadingTlsAdapter(tls)
        self.tls = tls
        # Listening once prepare returns, so callers need no readiness wait.
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, name="mwl-web", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually bound."""
        host, port = self._server.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def scheme(self) -> str:
        """``https`` with a certificate, else ``http``."""
        return "https" if self.tls is not None else "http"

    def start(self) -> None:
        """Start answering requests in the background."""
        self._thread.start()

    def shutdown(self) -> None:
        """Stop accepting, let the workers finish, close every connection."""
        self._server.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
