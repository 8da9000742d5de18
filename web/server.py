"""Serve the admin web app on waitress in a background thread, stoppable from the CLI."""

from __future__ import annotations

import threading
from typing import Any

import waitress
from waitress import wasyncore


class WebServer:
    """The admin page on waitress (a production WSGI server), in a daemon thread.

    Parameters
    ----------
    app
        The WSGI application (``web.create_app(...)``).
    host, port
        Where to listen; port 0 picks a free port (read it back from ``address``).
    """

    def __init__(self, app: Any, host: str, port: int, threads: int = 8) -> None:
        self._server: Any = waitress.create_server(
            app, host=host, port=port, threads=threads, ident="mwl", clear_untrusted_proxy_headers=True
        )
        self._thread = threading.Thread(target=self._server.run, name="mwl-web", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually bound."""
        return str(self._server.effective_host), int(self._server.effective_port)

    def start(self) -> None:
        """Start answering requests; the socket is already listening when this returns."""
        self._thread.start()

    def shutdown(self) -> None:
        """Close the listening socket and every open connection, then wait for the thread."""
        # Closing every channel empties waitress's socket map, which ends its loop.
        wasyncore.close_all(self._server._map)
        self._server.task_dispatcher.shutdown()
        self._thread.join(timeout=10)
