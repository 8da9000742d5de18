"""Schema migrations through Alembic, from the installed package (no alembic.ini needed)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

import migrations

logger = logging.getLogger(__name__)


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration that migrates through ``engine``'s connections."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` to ``revision`` (default: the newest).

    A database that a newer release has migrated already (a revision these migrations
    do not know) is left as it is: during a rolling upgrade the old node keeps running,
    and may restart, on the new node's schema, which the expand/contract rule of
    docs/upgrading.md keeps compatible with the previous release.
    """
    found = current_revision(engine)
    if found is not None and not known_revision(found):
        logger.warning(
            "the database schema is at revision %s, newer than this release knows (%s);"
            " running on it without migrating (a rolling upgrade: see docs/upgrading.md)",
            found,
            head_revision(),
        )
        return
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database behind ``engine`` down to ``revision``."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def head_revision() -> str | None:
    """The newest revision of the installed migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config_without_engine()).get_current_head()


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of the installed migrations."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    scripts = ScriptDirectory.from_config(alembic_config_without_engine())
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(engine: Engine) -> str | None:
    """The revision the database behind ``engine`` is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def alembic_config_without_engine() -> Config:
    """An Alembic configuration that reads the migration scripts only."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config
