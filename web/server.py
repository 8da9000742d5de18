"""Serve the admin web app on waitress in a background thread, stoppable from the CLI."""

from __future__ import annotations

import threading
from typing import Any

import waitress
from waitress import wasyncore

# How long one poll round may block: the longest a stop request waits to be seen.
_POLL_SECONDS = 0.2


class WebServer:
    """The admin page on waitress (a production WSGI server), in a daemon thread.

    Parameters
    ----------
    app
        The WSGI application (``web.create_app(...)``).
    host, port
        Where to listen; port 0 picks a free port (read it back from ``address``).
    threads
        Worker threads answering requests.
    """

    def __init__(self, app: Any, host: str, port: int, threads: int = 8) -> None:
        self._map: dict[int, Any] = {}
        # Listening once create_server returns, so callers need no readiness wait.
        self._server: Any = waitress.create_server(
            app,
            map=self._map,
            host=host,
            port=port,
            threads=threads,
            ident="mwl",
            clear_untrusted_proxy_headers=True,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mwl-web", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually bound."""
        return str(self._server.effective_host), int(self._server.effective_port)

    def _run(self) -> None:
        # One poll round at a time, so the loop notices the stop flag and ends on its
        # own thread before the sockets are closed (closing them under a poll races).
        while not self._stop.is_set():
            wasyncore.loop(timeout=_POLL_SECONDS, map=self._map, count=1)

    def start(self) -> None:
        """Start answering requests in the background."""
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the loop, then close the listening socket and every connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        wasyncore.close_all(self._map)
        self._server.task_dispatcher.shutdown()
