"""A request id per web request: in every line logged for it and in its response.

The id is the broker's own (a client could send any text): the ``X-Request-ID``
response header hands it to the browser or proxy, so a user's error report or a
proxy's access log line finds the broker's log lines of the same request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mwl.logs import log_context, new_id

HEADER = "X-Request-ID"


class RequestIds:
    """WSGI middleware: a :func:`mwl.logs.log_context` around each request.

    Parameters
    ----------
    app
        The WSGI application behind it.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request_id = new_id()
        environ["mwl.request_id"] = request_id

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append((HEADER, request_id))
            return start_response(status, headers, exc_info)

        # The client address after TrustedProxies (which wraps this middleware).
        with log_context(request_id=request_id, peer=environ.get("REMOTE_ADDR", "")):
            return self._app(environ, start)
