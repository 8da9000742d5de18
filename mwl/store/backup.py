"""``mwl backup``: a consistent copy of the database while the broker runs.

SQLite (the embedded default) is copied with its online backup API
(``sqlite3.Connection.backup``) in one step: one read transaction, so the copy is
the database as of one moment, and in WAL mode the broker's writers go on meanwhile
(a stepwise copy would restart on every write of another connection and might never
end under ingest). The copy is written next to the target, checked with
``PRAGMA integrity_check`` and only then renamed into place.

PostgreSQL is dumped with ``pg_dump`` (custom format, for ``pg_restore``) when it is
on ``PATH``; the password goes through the environment, never the command line.
Point-in-time recovery (base backup and WAL archive) is the server's job:
docs/upgrading.md, "Backup and restore".
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from mwl.errors import MwlError


@dataclass(frozen=True)
class BackupResult:
    """What was written, and how long it took."""

    path: Path
    bytes: int
    seconds: float
    # "sqlite" (online backup API, integrity checked) or "pg_dump" (custom format).
    method: str


def backup(database_url: str, target: Path) -> BackupResult:
    """Write a consistent copy of the database at ``database_url`` to ``target``.

    Raises
    ------
    MwlError
        ``target`` exists, the database is neither SQLite nor PostgreSQL, pg_dump is
        not installed or failed, or the copy is not intact.
    """
    if target.exists():
        raise MwlError(f"{target} exists already; choose a new file name")
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_backup(url.database or "", target)
    if url.get_backend_name() == "postgresql":
        return _pg_dump(database_url, target)
    raise MwlError(f"no backup for {url.get_backend_name()} databases; use its own tools")


def _sqlite_backup(database: str, target: Path) -> BackupResult:
    if not database or database == ":memory:" or not Path(database).is_file():
        raise MwlError(f"no SQLite database file at {database or '(none)'}")
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(database, timeout=30)
    try:
        copy = sqlite3.connect(partial)
        try:
            # pages=-1: every page in one step, in one read transaction (see above).
            source.backup(copy, pages=-1)
            verdict = copy.execute("PRAGMA integrity_check").fetchone()
        finally:
            copy.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise MwlError(f"backup of {database} failed: {exc}") from exc
    finally:
        source.close()
    if verdict is None or verdict[0] != "ok":
        partial.unlink(missing_ok=True)
        raise MwlError(f"the copy of {database} is not intact: {verdict}")
    partial.replace(target)
    return BackupResult(target, target.stat().st_size, time.monotonic() - started, "sqlite")


def libpq_arguments(database_url: str) -> tuple[list[str], dict[str, str]]:
    """pg_dump's connection arguments for a SQLAlchemy URL, and the environment.

    The password goes into ``PGPASSWORD`` (``ps`` shows arguments to every user); a
    ``search_path`` in ``options`` (one schema) becomes ``--schema``.
    """
    url = make_url(database_url)
    query = dict(url.query)
    options = query.pop("options", "")
    parts = (
        f"postgresql://{urllib.parse.quote(url.username or '', safe='')}@"
        if url.username
        else "postgresql://"
    )
    parts += f"{url.host or ''}" + (f":{url.port}" if url.port else "") + f"/{url.database or ''}"
    plain = {k: v for k, v in query.items() if isinstance(v, str)}
    if plain:
        parts += "?" + urllib.parse.urlencode(plain)
    arguments = [f"--dbname={parts}"]
    text = options if isinstance(options, str) else " ".join(options)
    for option in text.split():
        if option.startswith("-csearch_path="):
            arguments.extend(f"--schema={schema}" for schema in option.split("=", 1)[1].split(","))
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return arguments, env


def _pg_dump(database_url: str, target: Path) -> BackupResult:
    program = shutil.which("pg_dump")
    if program is None:
        raise MwlError(
            "PostgreSQL is backed up with pg_dump (not installed here: apt-get install"
            " postgresql-client) or by point-in-time recovery; see docs/upgrading.md"
        )
    arguments, env = libpq_arguments(database_url)
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    result = subprocess.run(
        [program, "--format=custom", f"--file={partial}", *arguments],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise MwlError(f"pg_dump failed: {result.stderr.strip().splitlines()[-1:]}")
    partial.replace(target)
    return BackupResult(target, target.stat().st_size, time.monotonic() - started, "pg_dump")
