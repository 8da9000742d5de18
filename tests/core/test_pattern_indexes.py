"""Revision 0005: the prefix-wildcard indexes carry varchar_pattern_ops on PostgreSQL only.

``alembic check`` (tests/core/test_migrations.py) does not compare operator classes,
so this test reads them back from the database, after upgrade and after downgrade.
"""

from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from mwl.store.engine import make_engine
from mwl.store.migrate import downgrade, upgrade

PATTERN_INDEXES = {
    "ix_patient_patient_id": ("patient", "patient_id"),
    "ix_patient_patient_name_key": ("patient", "patient_name_key"),
    "ix_requested_procedure_accession_number": ("requested_procedure", "accession_number"),
}


def operator_classes(engine: Engine) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Index name -> (columns, PostgreSQL operator classes) of the three indexes."""
    inspector = inspect(engine)
    found = {}
    for table in ("patient", "requested_procedure"):
        for index in inspector.get_indexes(table):
            if index["name"] in PATTERN_INDEXES:
                ops = index.get("dialect_options", {}).get("postgresql_ops", {})
                found[index["name"]] = (list(index["column_names"]), dict(ops))
    return found


def test_pattern_ops_on_postgresql_plain_index_elsewhere_and_back_down(
    empty_database_url: str,
):
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine)
        postgres = engine.dialect.name == "postgresql"
        expected = {
            name: ([column], {column: "varchar_pattern_ops"} if postgres else {})
            for name, (_, column) in PATTERN_INDEXES.items()
        }
        assert operator_classes(engine) == expected
        downgrade(engine, "0004_audit_tokens_settings")
        # The same indexes as before the revision: plain B-trees on the same columns.
        assert operator_classes(engine) == {
            name: ([column], {}) for name, (_, column) in PATTERN_INDEXES.items()
        }
        upgrade(engine)
        assert operator_classes(engine) == expected
    finally:
        engine.dispose()
