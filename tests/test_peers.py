"""The tests reach DCMTK and the other peers by path, whatever ``PATH`` says first."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import peers

TESTS = Path(__file__).resolve().parent
DCMTK = [peers.FINDSCU, peers.ECHOSCU, peers.DUMP2DCM]


def _path_with_the_venv_first() -> str:
    # What `source .venv/bin/activate` does to PATH.
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@pytest.mark.parametrize("peer", DCMTK, ids=lambda peer: peer.path.name)
def test_dcmtk_tools_are_dcmtk_with_the_venv_first_on_path(peer: peers.Peer):
    if peer.missing:
        pytest.skip(peer.missing)
    done = subprocess.run(
        [str(peer), "--version"],
        env={**os.environ, "PATH": _path_with_the_venv_first()},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert re.search(rf"\$dcmtk: {peer.path.name} v3\.", done.stdout), done.stdout + done.stderr


def test_pynetdicom_findscu_would_shadow_dcmtk_on_path():
    # Why the paths are absolute: once the venv is activated, a bare "findscu" is
    # pynetdicom's, which has no --version and is not the peer the tests mean.
    found = shutil.which("findscu", path=_path_with_the_venv_first())
    if found is None or Path(found) == peers.FINDSCU.path:
        pytest.skip("this virtual environment has no findscu of its own")
    assert Path(found).parent == Path(sys.executable).parent
    assert (
        "$dcmtk:"
        not in subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    )


def test_every_peer_is_named_by_an_absolute_path():
    assert all(peer.path.is_absolute() for peer in peers.ALL)
    missing = peers.Peer(Path("/nonexistent/findscu"), "dcmtk")
    assert missing.missing == "/nonexistent/findscu is not installed (apt-get install dcmtk)"


def test_no_test_looks_a_peer_up_on_path():
    # New tests take their programs from tests/peers.py, so that a venv cannot shadow them.
    lookups = [
        f"{path.relative_to(TESTS)}:{number}"
        for path in TESTS.rglob("*.py")
        if "node_modules" not in path.parts and path.name not in {"peers.py", "test_peers.py"}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "shutil.which(" in line
        or re.search(r"""\[\s*["'](findscu|echoscu|storescu|dump2dcm|Orthanc|node)["']""", line)
    ]
    assert lookups == []
