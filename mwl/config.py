"""The broker's one typed settings object: defaults < TOML file < MWL_* environment."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mwl.errors import SettingsError

ENV_PREFIX = "MWL_"


@dataclass(frozen=True)
class Settings:
    """Every setting of the broker.

    Field names are public: ``hl7_port`` is read from ``MWL_HL7_PORT`` and from
    ``port`` in the ``[hl7]`` table of the TOML file (or a flat ``hl7_port``).
    """

    database_url: str = "sqlite:///mwl.db"
    bind_address: str = "0.0.0.0"
    hl7_port: int = 2575
    dicom_port: int = 11112
    dicom_ae_title: str = "MWL"
    web_port: int = 8080
    # Signs session cookies; when empty, a random key is made per process (sessions
    # then end with a restart, which is safe but tiresome: set it in production).
    web_secret_key: str = field(default="", repr=False)
    # Cookies marked Secure: set when the web page is served behind TLS.
    web_secure_cookies: bool = False
    hl7_max_frame_bytes: int = 1_048_576
    hl7_idle_timeout_seconds: float = 300.0
    # Charset of HL7 messages without MSH-18. Many RIS send Latin-1 unlabelled.
    hl7_default_charset: str = "8859/1"
    # Identifiers and message bodies are patient data: logged only when asked, at DEBUG.
    log_phi: bool = False
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The effective settings without secrets, for the start-up log."""
        values = dataclasses.asdict(self)
        values["web_secret_key"] = "(set)" if self.web_secret_key else "(random per process)"
        url = make_url(self.database_url)
        values["database_url"] = url.render_as_string(hide_password=True)
        return values


def _validate(settings: Settings) -> None:
    for name in ("hl7_port", "dicom_port", "web_port"):
        port = getattr(settings, name)
        if not 0 <= port <= 65535:
            raise SettingsError(name, f"{port} is not a TCP port (0-65535)")
    ae = settings.dicom_ae_title
    if not ae.strip() or len(ae) > 16 or "\\" in ae or not ae.isascii() or not ae.isprintable():
        raise SettingsError(
            "dicom_ae_title", f"{ae!r} is not an AE title (1-16 printable ASCII characters)"
        )
    try:
        ipaddress.ip_address(settings.bind_address)
    except ValueError:
        if settings.bind_address != "localhost":
            raise SettingsError(
                "bind_address", f"{settings.bind_address!r} is not an IP address"
            ) from None
    try:
        make_url(settings.database_url)
    except ArgumentError:
        raise SettingsError(
            "database_url", f"{settings.database_url!r} is not a SQLAlchemy database URL"
        ) from None
    if settings.hl7_max_frame_bytes < 1024:
        raise SettingsError("hl7_max_frame_bytes", "must be at least 1024")
    if settings.hl7_idle_timeout_seconds <= 0:
        raise SettingsError("hl7_idle_timeout_seconds", "must be positive")
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError("log_level", f"{settings.log_level!r} is not DEBUG/INFO/WARNING/ERROR")


def _coerce(name: str, kind: type, value: Any) -> Any:
    """Turn a TOML or environment value into the field's type, or say which setting is bad."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() in {"1", "true", "yes", "on"}:
                    return True
                if text.lower() in {"0", "false", "no", "off"}:
                    return False
                raise ValueError(text)
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
            if kind is str:
                return value
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise SettingsError(name, f"{value!r} is not a valid {kind.__name__}")


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def structured(convert: Callable[[Any], Any]) -> dict[str, Any]:
    """Field metadata for a structured setting (tables, lists of rules).

    ``convert`` takes the TOML value (or the JSON-decoded environment variable) and
    returns the field's value, raising ``ValueError`` with a reason when it is bad.
    Use as ``field(default=..., metadata=structured(fn))``.
    """
    return {"convert": convert}


def _convert(name: str, variable: str, value: Any, from_env: bool) -> Any:
    f = _FIELDS[name]
    convert = f.metadata.get("convert")
    if convert is None:
        return _coerce(variable, _TYPES[str(f.type)], value)
    try:
        if from_env:
            value = json.loads(value)
        return convert(value)
    except (ValueError, TypeError, KeyError) as exc:
        raise SettingsError(variable, f"not valid: {exc}") from None


def _flatten_toml(data: Mapping[str, Any]) -> dict[str, Any]:
    """``[hl7] port = 1`` and ``hl7_port = 1`` both become ``{"hl7_port": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            for sub, subvalue in value.items():
                flat[f"{key}_{sub}"] = subvalue
        else:
            flat[key] = value
    return flat


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults, then ``config_file``, then ``MWL_*`` variables, then ``overrides``.

    Raises
    ------
    SettingsError
        Naming the first bad setting: unknown key, wrong type or invalid value.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError("config", f"cannot read {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError("config", f"{config_file} is not valid TOML: {exc}") from None
        for key, value in _flatten_toml(data).items():
            if key not in _FIELDS:
                raise SettingsError(key, f"unknown setting in {config_file}")
            values[key] = _convert(key, key, value, from_env=False)
    env = os.environ if environ is None else environ
    for name in _FIELDS:
        variable = ENV_PREFIX + name.upper()
        if variable in env:
            values[name] = _convert(name, variable, env[variable], from_env=True)
    for key, value in overrides.items():
        if value is not None:
            values[key] = _convert(key, key, value, from_env=False)
    return Settings(**values)


_FIELDS = {f.name: f for f in fields(Settings)}
