"""docs/upgrading.md has a row for every migration, saying whether it is online-safe."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "upgrading.md"
VERSIONS = ROOT / "migrations" / "versions"
_ROW = re.compile(r"^\| `([^`]+)` \| `([^`]+)` \| [^|]+ \| (\*\*no\*\*|yes) \| [^|]+ \|$")


def _revision(path: Path) -> str:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "revision" for t in targets):
                assert isinstance(node.value, ast.Constant)
                return str(node.value.value)
    raise AssertionError(f"{path.name} has no revision")


def test_every_migration_has_a_row_with_its_revision_and_verdict():
    rows = {m[2]: (m[1], m[3]) for m in map(_ROW.match, DOC.read_text().splitlines()) if m}
    files = sorted(p for p in VERSIONS.glob("*.py") if not p.name.startswith("_"))
    assert files
    missing = [p.name for p in files if p.name not in rows]
    assert not missing, (
        f"docs/upgrading.md, 'The migrations': add a row for {missing} (revision, file,"
        " change, online yes or **no**, what the previous release does meanwhile)"
    )
    for path in files:
        assert rows[path.name][0] == _revision(path), path.name
    assert set(rows) <= {p.name for p in files}, "a row for a migration that does not exist"
