"""The conformance statement lists every key the code knows, with its tag."""

from __future__ import annotations

from pathlib import Path

from pydicom.datadict import tag_for_keyword

from mwl.dicom import keys as keytable

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance-statement.md"


def test_every_key_of_the_table_is_in_the_conformance_statement():
    text = DOC.read_text(encoding="utf-8")
    missing = []
    for spec in keytable.KEYS:
        if spec.level is keytable.Level.CODE:
            continue
        tag = tag_for_keyword(spec.keyword)
        assert tag is not None, spec.keyword
        label = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if label not in text:
            missing.append(f"{spec.keyword} {label}")
    assert missing == []
