"""The JSON API under /api/v1, with bearer-token authentication and an OpenAPI document."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")
