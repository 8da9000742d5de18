"""The broker's exception hierarchy: every error it raises on purpose is an ``MwlError``."""

from __future__ import annotations


class MwlError(Exception):
    """Root of the broker's own errors."""


class SettingsError(MwlError):
    """A setting is missing, of the wrong type or out of range."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        label = setting
        if setting.islower() and setting != "config":
            label = f"{setting} (MWL_{setting.upper()})"
        super().__init__(f"invalid setting {label}: {reason}")


class InvalidOrderError(MwlError):
    """An order cannot be applied as it stands (a domain rule, not a parsing problem).

    ``location`` names the HL7 field that decided it (e.g. ``ORC-1``) when known, so
    the HL7 adapter can put it in the ERR segment.
    """

    def __init__(self, reason: str, location: str = "") -> None:
        self.reason = reason
        self.location = location
        super().__init__(reason)


class InvalidQueryError(MwlError):
    """A worklist query cannot be answered as asked (bad value, bad key)."""

    def __init__(self, reason: str, offending_keyword: str = "") -> None:
        self.reason = reason
        self.offending_keyword = offending_keyword
        super().__init__(reason)


class UserError(MwlError):
    """A user account cannot be created or changed as asked (duplicate, empty password, ...)."""

    def __init__(self, reason: str, username: str = "") -> None:
        self.reason = reason
        self.username = username
        super().__init__(reason)
