"""Backup and restore time of a 20,000-step database: SQLite and PostgreSQL.

SQLite: ``mwl backup`` (the online backup API, one step, with the integrity check
it runs on the copy), then the restore: copy the backup to where the live file was
and run ``PRAGMA integrity_check`` plus the start-up migration check on it.
PostgreSQL: ``mwl backup`` (``pg_dump --format=custom``), then ``pg_restore`` into a
new, empty database. Each is run ``--repeat`` times; the report gives medians.

The databases are made with bench/load_items.py (the same generated items as the
other benchmarks) in a temporary folder and in a PostgreSQL database of this run's
own (dropped at the end).

Example::

    python bench/backup_restore.py                # 20,000 steps, 3 runs each
    python bench/backup_restore.py --n 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import load_items
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from mwl.store.backup import backup, libpq_arguments
from mwl.store.engine import make_engine
from mwl.store.migrate import upgrade
from mwl.store.models import ScheduledProcedureStep


def _steps(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(ScheduledProcedureStep)))
    finally:
        engine.dispose()


def sqlite_run(folder: Path, url: str, index: int) -> tuple[float, float, int]:
    """(backup s, restore s, bytes) of one SQLite round."""
    target = folder / f"backup-{index}.db"
    done = backup(url, target)
    restored = folder / f"restored-{index}.db"
    started = time.monotonic()
    shutil.copyfile(target, restored)
    with sqlite3.connect(restored) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    engine = make_engine(f"sqlite:///{restored}")
    upgrade(engine)  # what `mwl serve` does first: a no-op on a current schema
    engine.dispose()
    restore_s = time.monotonic() - started
    target.unlink()
    restored.unlink()
    return done.seconds, restore_s, done.bytes


def postgres_run(folder: Path, url: str, index: int) -> tuple[float, float, int]:
    """(backup s, restore s, bytes) of one PostgreSQL round (pg_dump, pg_restore)."""
    target = folder / f"backup-{index}.pgdump"
    done = backup(url, target)
    restore_url = make_url(url).set(database=f"{make_url(url).database}_restore")
    shown = restore_url.render_as_string(hide_password=False)
    benchlib.recreate_database(shown)
    arguments, env = libpq_arguments(shown)
    started = time.monotonic()
    subprocess.run(
        ["pg_restore", "--no-owner", *arguments, str(target)], env=env, check=True, timeout=3600
    )
    restore_s = time.monotonic() - started
    assert _steps(shown) == _steps(url)
    benchlib.drop_database(shown)
    target.unlink()
    return done.seconds, restore_s, done.bytes


def report(name: str, rounds: list[tuple[float, float, int]], steps: int) -> list[object]:
    backups = [r[0] for r in rounds]
    restores = [r[1] for r in rounds]
    return [
        name,
        steps,
        f"{rounds[0][2] / 1e6:.1f}",
        f"{statistics.median(backups):.2f}",
        f"{min(backups):.2f}-{max(backups):.2f}",
        f"{statistics.median(restores):.2f}",
        f"{min(restores):.2f}-{max(restores):.2f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="steps in the database")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg-url", help="a PostgreSQL database to (re)create; default: own")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    benchlib.print_header(f"backup and restore of {args.n} steps")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mwl-backup-bench-") as tmp:
        folder = Path(tmp)
        sqlite_url = f"sqlite:///{folder / 'live.db'}"
        load_items.load(sqlite_url, args.n, recreate=True, progress=False)
        print(f"SQLite: {benchlib.database_durability(sqlite_url)}", flush=True)
        rounds = [sqlite_run(folder, sqlite_url, i) for i in range(args.repeat)]
        rows.append(report("SQLite, mwl backup / file copy", rounds, _steps(sqlite_url)))
        if not args.no_postgres and shutil.which("pg_dump") and shutil.which("pg_restore"):
            pg_url = benchlib.run_pg_url("mwl_backup_bench", args.pg_url)
            try:
                load_items.load(pg_url, args.n, recreate=True, progress=False)
                print(f"PostgreSQL: {benchlib.database_durability(pg_url)}", flush=True)
                rounds = [postgres_run(folder, pg_url, i) for i in range(args.repeat)]
                rows.append(report("PostgreSQL, pg_dump / pg_restore", rounds, _steps(pg_url)))
            finally:
                benchlib.cleanup("drop the bench database", benchlib.drop_database, pg_url)
    print()
    header = [
        "database",
        "steps",
        "backup MB",
        "backup median s",
        "backup range s",
        "restore median s",
        "restore range s",
    ]
    print(benchlib.markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
