"""The built wheel holds everything `pip install .` users need: migrations, templates."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# Builds the wheel (ten seconds and more): not for the fast subset.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    # Build from a copy: setuptools reuses a build/ folder left in the work tree,
    # which would hide files the package data no longer names.
    source = tmp_path_factory.mktemp("source") / "mwl"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            "build",
            "*.egg-info",
            ".git",
            ".venv",
            "__pycache__",
            ".pytest_cache",
            ".hypothesis",
            "tests",
            "bench",
            "*.db*",
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("mwl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_has_every_migration(wheel_names: set[str]):
    migrations = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert migrations
    for name in migrations:
        assert f"migrations/versions/{name}" in wheel_names
    assert "migrations/env.py" in wheel_names


def test_wheel_has_templates_and_static_files(wheel_names: set[str]):
    for path in (ROOT / "web").rglob("*"):
        if path.is_file() and path.suffix in {".html", ".css"}:
            assert path.relative_to(ROOT).as_posix() in wheel_names


def test_wheel_has_the_common_password_list_and_its_licence(wheel_names: set[str]):
    assert "mwl/admin/common_passwords.txt" in wheel_names
    assert "mwl/admin/common_passwords.LICENSE" in wheel_names
