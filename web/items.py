"""One worklist item: what the modality receives, its history, edits; new orders."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("items", __name__)
