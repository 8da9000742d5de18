"""Health check for load balancers and monitoring: no login, no patient data."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from web.store import db_session

logger = logging.getLogger(__name__)

bp = Blueprint("status", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 ``{"status": "ok", "database": "ok"}``; 503 when the database does not answer."""
    try:
        db_session().execute(select(1))
    except SQLAlchemyError as exc:
        # The class name only: driver messages can carry the URL and its password.
        logger.warning("health check: the database does not answer (%s)", type(exc).__name__)
        return jsonify(status="unavailable", database="unavailable"), 503
    return jsonify(status="ok", database="ok"), 200
