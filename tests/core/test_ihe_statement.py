"""The IHE integration statement names every transaction it claims, and says true things.

What it says the HL7 side refuses must still be refused (mwl.hl7.parse), so a new
message type or event makes this test ask for the statement to be updated.
"""

from __future__ import annotations

import re
from pathlib import Path

from mwl.hl7.parse import SUPPORTED_EVENTS

ROOT = Path(__file__).resolve().parents[2]
STATEMENT = ROOT / "docs" / "ihe-integration-statement.md"

TRANSACTIONS = {
    "RAD-1": "Patient Registration",
    "RAD-2": "Placer Order Management",
    "RAD-3": "Filler Order Management",
    "RAD-4": "Procedure Scheduled",
    "RAD-5": "Query Modality Worklist",
    "RAD-6": "Modality Procedure Step In Progress",
    "RAD-7": "Modality Procedure Step Completed/Discontinued",
    "RAD-12": "Patient Update",
    "RAD-13": "Procedure Update",
    "ITI-19": "Authenticate Node",
    "ITI-20": "Record Audit Event",
    "ITI-1": "Maintain Time",
}


def _table_rows(text: str) -> dict[str, str]:
    """First cell -> the whole row, of every Markdown table row."""
    return {
        cells[1].strip(): line
        for line in text.splitlines()
        if line.startswith("|") and len(cells := line.split("|")) > 2
    }


def test_every_transaction_is_named_with_its_title():
    text = STATEMENT.read_text(encoding="utf-8")
    missing = [f"{t} {title}" for t, title in TRANSACTIONS.items() if f"{t} {title}" not in text]
    assert missing == []


def test_every_scheduled_workflow_transaction_has_a_support_row():
    rows = _table_rows(STATEMENT.read_text(encoding="utf-8"))
    for transaction, title in TRANSACTIONS.items():
        if transaction.startswith("RAD-"):
            row = rows.get(f"{transaction} {title}")
            assert row is not None, transaction
            assert re.search(r"\| (Yes|Partial|No)\b", row), row


def test_profiles_and_the_audit_condition_are_stated():
    text = STATEMENT.read_text(encoding="utf-8")
    for profile in ("Scheduled Workflow.b (SWF.b)", "(ATNA)", "Consistent Time (CT)"):
        assert profile in text
    for field in ("Vendor", "Product name", "Version", "Date"):
        assert f"| {field} |" in text
    # ITI-20 points at the admin guide's audit section (finalised with the audit work).
    assert "(admin-guide.md#audit-atna)" in text


def test_what_the_statement_says_is_refused_is_refused():
    # RAD-1's registrations, RAD-12's transfers and discharges, SWF.b's OMG^O19.
    for event in ("A01", "A04", "A05", "A11", "A38", "A02", "A03", "A06", "A07", "A12", "A13"):
        assert event not in SUPPORTED_EVENTS["ADT"], event
    assert "OMG" not in SUPPORTED_EVENTS and "ORR" not in SUPPORTED_EVENTS
    # And what it says is accepted is.
    assert {"A08", "A31", "A40", "A47"} <= SUPPORTED_EVENTS["ADT"]
    assert "O01" in SUPPORTED_EVENTS["ORM"] and "O23" in SUPPORTED_EVENTS["OMI"]


def test_readme_and_conformance_statement_link_it():
    assert "(docs/ihe-integration-statement.md)" in (ROOT / "README.md").read_text("utf-8")
    conformance = (ROOT / "docs" / "conformance-statement.md").read_text("utf-8")
    assert "(ihe-integration-statement.md)" in conformance
