"""Forwarded headers believed from the configured reverse proxies only.

Behind a proxy that terminates TLS, the client's address and scheme arrive in
``X-Forwarded-For`` / ``-Proto`` / ``-Host`` / ``-Port``. Anyone can send these
headers, so werkzeug's ProxyFix applies only to requests whose peer address is one
of ``web_trusted_proxies``; from anyone else the headers are ignored and the
peer address stays the client address (what the login limits count).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix


class TrustedProxies:
    """WSGI middleware: ProxyFix (one hop) for requests from the trusted proxies.

    Parameters
    ----------
    app
        The WSGI application behind it.
    proxies
        IP addresses or networks of the proxies (``web_trusted_proxies``).
    """

    def __init__(self, app: Any, proxies: Iterable[str]) -> None:
        self._app = app
        self._fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_port=1)
        self._networks = tuple(ipaddress.ip_network(p, strict=False) for p in proxies)

    def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self._trusted(environ.get("REMOTE_ADDR", "")):
            return self._fixed(environ, start_response)
        return self._app(environ, start_response)
