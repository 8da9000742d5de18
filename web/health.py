"""Monitoring without a login: ``/metrics`` (Prometheus), ``/health`` and ``/ready`` (probes).

``/health`` is what a load balancer checks: the process answers and its listeners
are bound. ``/ready`` adds the database: it answers and is at this broker's schema.
Neither looks at the RIS outbox: a RIS that does not answer is an alert
(``mwl_outbox_oldest_pending_age_seconds``), not a reason to stop the worklist.

All three answer only clients in ``metrics_allowed_networks``; ``/metrics`` also wants
``Authorization: Bearer <metrics_token>`` while that is set. No patient data, no
setting values: statuses, counts and AE titles of the configured profiles.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Mapping

from flask import Blueprint, Response, abort, jsonify, request
from prometheus_client import generate_latest

from mwl.operations import metrics
from mwl.operations.health import DatabaseProbe, database_readiness
from web.store import state

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

# The classic text format, which every Prometheus (Debian's 2.x too) reads;
# generate_latest writes it.
EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Lent by the composition root: each listener's name -> whether it is bound now.
ListenerStatus = Callable[[], Mapping[str, bool]]
# The database as /health shows it (detail only: /health stays 200 while it is down).
_DATABASE = DatabaseProbe()


def _client_allowed() -> bool:
    networks = state().settings.metrics_allowed_networks
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(network) for network in networks)


@bp.before_request
def _only_allowed_networks() -> None:
    if not _client_allowed():
        # Not a 401: no credential would help from this address.
        logger.info(
            "monitoring request from %s refused: not in metrics_allowed_networks",
            request.remote_addr,
        )
        abort(403)


@bp.get("/metrics")
def metrics_page() -> Response:
    """The Prometheus exposition of :data:`mwl.operations.metrics.REGISTRY`."""
    if not state().settings.metrics_enabled:
        abort(404)
    token = state().settings.metrics_token
    if token:
        sent = request.headers.get("Authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
            response = Response("a bearer token is required\n", 401, mimetype="text/plain")
            response.headers["WWW-Authenticate"] = 'Bearer realm="mwl metrics"'
            return response
    return Response(generate_latest(metrics.REGISTRY), 200, content_type=EXPOSITION_TYPE)


@bp.get("/health")
def health() -> tuple[Response, int]:
    """200 while every listener is bound; 503 with the ones that are not.

    The database's state is shown but not counted: a node whose database is down or
    restarting still answers (HL7 with AE, C-FIND with a failure status), and every
    other node of that database would be taken out of the balancer with it.
    """
    probe = state().listener_status
    listeners = dict(probe()) if probe is not None else {}
    up = all(listeners.values())
    body = {
        "status": "ok" if up else "unavailable",
        "listeners": {name: "ok" if bound else "down" for name, bound in listeners.items()},
        "database": _DATABASE.state(state().session_factory.kw["bind"]),
    }
    return jsonify(body), 200 if up else 503


@bp.get("/ready")
def ready() -> tuple[Response, int]:
    """200 when the database answers and is migrated; 503 with the reason otherwise."""
    found = database_readiness(state().session_factory.kw["bind"])
    body = {
        "status": "ready" if found.ready else "unready",
        "database": found.database,
        "schema_revision": found.revision,
        "expected_schema_revision": found.expected_revision,
    }
    if found.error:
        body["error"] = found.error
    return jsonify(body), 200 if found.ready else 503
