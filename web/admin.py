"""Admin pages: trusted AEs and per-AE profiles, HL7 mapping rules, effective settings."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")
