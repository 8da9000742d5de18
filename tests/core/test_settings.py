"""Settings: defaults < TOML file < MWL_* environment, and one clear error per bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mwl.config import Settings, load_settings
from mwl.errors import SettingsError


def test_defaults_are_the_documented_ones():
    s = load_settings(environ={})
    assert (s.hl7_port, s.dicom_port, s.web_port) == (2575, 11112, 8080)
    assert s.dicom_ae_title == "MWL"
    assert s.database_url == "sqlite:///mwl.db"


def test_file_then_environment_override(tmp_path: Path):
    config = tmp_path / "mwl.toml"
    config.write_text('web_port = 9000\n[hl7]\nport = 3000\n[dicom]\nae_title = "FILEAE"\n')
    s = load_settings(config, environ={"MWL_HL7_PORT": "4000"})
    assert s.hl7_port == 4000  # environment wins over the file
    assert s.dicom_ae_title == "FILEAE"
    assert s.web_port == 9000  # flat key form works too


def test_sample_settings_file_loads():
    sample = Path(__file__).resolve().parents[2] / "samples" / "mwl.toml"
    assert load_settings(sample, environ={}) == Settings()


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MWL_HL7_PORT": "abc"}, "MWL_HL7_PORT"),
        ({"MWL_DICOM_PORT": "70000"}, "MWL_DICOM_PORT"),
        ({"MWL_DICOM_AE_TITLE": "A_TITLE_LONGER_THAN_16"}, "MWL_DICOM_AE_TITLE"),
        ({"MWL_DATABASE_URL": "not a url"}, "MWL_DATABASE_URL"),
        ({"MWL_BIND_ADDRESS": "nowhere"}, "MWL_BIND_ADDRESS"),
        ({"MWL_LOG_PHI": "maybe"}, "MWL_LOG_PHI"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], named: str):
    with pytest.raises(SettingsError) as info:
        load_settings(environ=environ)
    assert named in str(info.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path):
    config = tmp_path / "mwl.toml"
    config.write_text("[hl7]\nprot = 1\n")
    with pytest.raises(SettingsError, match="hl7_prot"):
        load_settings(config, environ={})


def test_cli_stops_with_one_line_naming_the_setting(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "mwl.cli", "serve"],
        env={"MWL_DICOM_PORT": "-1", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "MWL_DICOM_PORT" in lines[0]
    assert not list(tmp_path.iterdir())  # nothing was created
