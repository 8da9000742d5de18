"""The HL7 mapping settings: read from TOML and environment, checked, used by the listener."""

from __future__ import annotations

from pathlib import Path

import pytest

from mwl.config import Hl7StationRule, Settings, load_settings
from mwl.domain import SpsStatus
from mwl.errors import SettingsError
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.server import Hl7Server
from mwl.orders.apply import DEFAULT_STATUS_TABLE, status_table

from .conftest import replace_field, sample

TOML = """
[hl7]
protocol_code_component = 1
station_from_orc18 = true
modality_map = { MRI = "MR", cat = "ct" }

[hl7.order_status]
XO_ = ""
SC_IP = "SCHEDULED"

[[hl7.station_rules]]
modality = "CT"
station_ae_title = "CT1"
station_name = "CT room 1"
"""


def test_hl7_tables_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "mwl.toml"
    path.write_text(TOML)
    settings = load_settings(path, environ={})
    assert settings.hl7_protocol_code_component == 1
    assert settings.hl7_station_from_orc18 is True
    assert settings.hl7_modality_map == (("MRI", "MR"), ("CAT", "CT"))
    assert settings.hl7_order_status == (("XO", "", ""), ("SC", "IP", "SCHEDULED"))
    assert settings.hl7_station_rules == (
        Hl7StationRule(station_ae_title="CT1", station_name="CT room 1", modality="CT"),
    )


def test_hl7_tables_from_environment() -> None:
    settings = load_settings(
        environ={
            "MWL_HL7_MODALITY_MAP": '{"MRI": "MR"}',
            "MWL_HL7_STATION_RULES": '[{"station_ae_title": "US1", "modality": "US"}]',
        }
    )
    assert settings.hl7_modality_map == (("MRI", "MR"),)
    assert settings.hl7_station_rules[0].station_ae_title == "US1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MWL_HL7_MODALITY_MAP", '{"MRI": "M R"}'),
        ("MWL_HL7_MODALITY_MAP", '["MR"]'),
        ("MWL_HL7_ORDER_STATUS", '{"NW": "SCHEDULED"}'),
        ("MWL_HL7_ORDER_STATUS", '{"NW_SC": "PLANNED"}'),
        ("MWL_HL7_STATION_RULES", '[{"modality": "CT"}]'),
        ("MWL_HL7_STATION_RULES", '[{"station_ae_title": "CT1", "room": "1"}]'),
        ("MWL_HL7_STATION_RULES", '[{"station_ae_title": "AN_AE_TITLE_TOO_LONG"}]'),
        ("MWL_HL7_PROTOCOL_CODE_COMPONENT", "2"),
    ],
)
def test_bad_hl7_settings_are_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={variable: value})
    assert variable in str(info.value) or variable.removeprefix("MWL_").lower() in str(info.value)


def test_status_table_overrides() -> None:
    table = status_table((("XO", "", ""), ("SC", "IP", "SCHEDULED"), ("ZZ", "", "HELD")))
    assert ("XO", "") not in table
    assert table[("SC", "IP")] is SpsStatus.SCHEDULED
    assert table[("ZZ", "")] is SpsStatus.HELD
    assert table[("NW", "SC")] is DEFAULT_STATUS_TABLE[("NW", "SC")]


def test_unknown_default_charset_is_refused(settings: Settings, session_factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SettingsError):
        Hl7Server(settings.replace(hl7_default_charset="KLINGON"), session_factory)


@pytest.mark.e2e
def test_listener_uses_the_site_status_table(settings: Settings, session_factory) -> None:  # type: ignore[no-untyped-def]
    site = settings.replace(hl7_order_status=(("ZZ", "", "SCHEDULED"), ("NW", "SC", "")))
    with Hl7Server(site, session_factory) as server:
        zz = replace_field(sample("orm_o01_nw.hl7"), b"ORC", 1, b"ZZ")
        zz = replace_field(zz, b"ORC", 5, b"")
        acks = send_messages(*server.address, [sample("orm_o01_nw.hl7"), zz])
    assert [ack_summary(a)[0] for a in acks] == ["AE", "AA"]
