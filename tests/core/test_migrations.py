"""The migrations build exactly the models' schema, and go down and up again."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from mwl.store.engine import make_engine
from mwl.store.migrate import alembic_config, downgrade, upgrade


def test_upgrade_check_downgrade_upgrade(empty_database_url: str):
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine)
        config = alembic_config(engine)
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.check(config)  # raises when models and migrations differ
        assert "scheduled_procedure_step" in inspect(engine).get_table_names()
        downgrade(engine, "base")
        assert "scheduled_procedure_step" not in inspect(engine).get_table_names()
        upgrade(engine)
        assert "scheduled_procedure_step" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
