"""docs/hl7-mapping.md's field table is the stored-field declaration, written out.

The table between the markers of docs/hl7-mapping.md is made from
``mwl.worklist.fields.FIELDS`` (HL7 source, DICOM keyword, column) and pydicom's
data dictionary (attribute name, tag). When the declaration changes, this test
fails until the table is written again::

    .venv/bin/python tests/core/test_hl7_mapping_doc.py --write
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydicom.datadict import dictionary_description, tag_for_keyword

from mwl.worklist.fields import FIELDS, Section, StoredField

DOC = Path(__file__).resolve().parents[2] / "docs" / "hl7-mapping.md"
BEGIN = "<!-- fields: written from mwl/worklist/fields.py, tests/core/test_hl7_mapping_doc.py -->"
END = "<!-- fields: end -->"
WRITE_COMMAND = ".venv/bin/python tests/core/test_hl7_mapping_doc.py --write"

SECTION_TITLES = {
    Section.PATIENT: "Patient",
    Section.ORDER: "Order (requested procedure)",
    Section.STEP: "Scheduled procedure step",
    Section.DETAILS: "Order details",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, f"{keyword} is not a DICOM keyword"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _columns(field: StoredField) -> str:
    names = []
    for attribute in field.columns:
        column = attribute.property.columns[0]
        names.append(f"`{column.table.name}.{column.name}`")
    return ", ".join(names)


def _row(field: StoredField) -> str:
    cells = (
        "<br>".join(dictionary_description(tag_for_keyword(k)) for k in field.keywords),
        "<br>".join(_tag(k) for k in field.keywords),
        "<br>".join(f"`{k}`" for k in field.keywords),
        field.hl7,
        _columns(field),
        f"`{field.api_name}`",
    )
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render_table(fields: Sequence[StoredField] = FIELDS) -> str:
    """The generated part of the document, markers included: one table per page section."""
    lines = [BEGIN, ""]
    for section in Section:
        rows = [_row(f) for f in fields if f.section is section]
        if not rows:
            continue
        lines += [
            f"#### {SECTION_TITLES.get(section, section.value.title())}",
            "",
            "| DICOM attribute | tag | keyword | HL7 (default mapping) | stored in | item field |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    lines.append(END)
    return "\n".join(lines)


def _split(text: str) -> tuple[str, str, str]:
    start = text.index(BEGIN)
    end = text.index(END, start) + len(END)
    return text[:start], text[start:end], text[end:]


def test_the_field_table_is_the_declaration():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC} lost the markers of its field table"
    _before, table, _after = _split(text)
    assert table == render_table(), (
        f"docs/hl7-mapping.md's field table differs from mwl/worklist/fields.py;"
        f" write it again with: {WRITE_COMMAND}"
    )


def test_every_declared_field_is_in_the_table():
    # The table is made from FIELDS; this says so in words if the rendering skips one.
    table = render_table()
    missing = [f.name for f in FIELDS if f"`{f.api_name}`" not in table]
    assert missing == []


def test_a_changed_declaration_is_noticed():
    # The comparison can fail: a declaration with one HL7 source changed, or one field
    # more, no longer gives the document's table.
    _before, table, _after = _split(DOC.read_text(encoding="utf-8"))
    changed = [dataclasses.replace(FIELDS[0], hl7=FIELDS[0].hl7 + " (changed)"), *FIELDS[1:]]
    more = [*FIELDS, dataclasses.replace(FIELDS[-1], name="made_up_field")]
    assert render_table(changed) != table
    assert render_table(more) != table


def test_nothing_points_at_the_old_mapping_file():
    # The mapping document is docs/hl7-mapping.md; HL7-MAPPING.md was never in the repo.
    root = DOC.parents[1]
    skipped = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
    here = Path(__file__).resolve()
    stale = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in skipped]
        for name in files:
            path = Path(directory, name)
            if path.suffix not in {".py", ".md", ".html", ".toml"} or path == here:
                continue
            if "HL7-MAPPING" in path.read_text(encoding="utf-8", errors="replace"):
                stale.append(str(path.relative_to(root)))
    assert stale == []


def _write() -> None:
    text = DOC.read_text(encoding="utf-8")
    before, _table, after = _split(text)
    DOC.write_text(before + render_table() + after, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {WRITE_COMMAND}")
    _write()
