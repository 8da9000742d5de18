"""Rolling upgrade: the previous release's node keeps serving on the head's schema.

"The previous release" is main just before the newest migration file
was added (there are no release tags), exported with ``git archive`` into a
temporary directory and run with this venv's interpreter and ``PYTHONPATH``
pointing at it (checked: its ``mwl``, ``migrations`` and ``web`` are the old
tree's). On one PostgreSQL schema:

1. the old node starts on an empty schema and migrates it to its own head;
2. HL7 orders stream into it while a head node starts beside it and migrates the
   schema to head under it (step 2 of docs/upgrading.md);
3. both nodes take orders and answer C-FINDs for what either took;
4. every AA'd order is stored once, none is lost;
5. the old node restarts on the head-migrated schema: a release that has
   ``known_revision`` (mwl/store/migrate.py) starts and serves; one from before it
   stops at start-up on the unknown revision, as docs/upgrading.md says.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mwl.store.engine import make_engine
from mwl.store.migrate import current_revision, head_revision
from mwl.store.models import Hl7Message, RequestedProcedure
from tests.databases import fresh_database_url
from tests.ingest import Feeder, ct_accessions, numbers
from tests.peers import GIT
from tests.serve import AE_TITLE, Broker, broker_env, start_broker

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
# What `mwl serve` imports of the tree: the broker, its migrations and the web page.
PACKAGES = ("mwl", "migrations", "web")


def _git(*args: str) -> str:
    return subprocess.run(
        [str(GIT), "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def _has_revision(commit: str, revision: str) -> bool:
    found = subprocess.run(
        [str(GIT), "-C", str(ROOT), "grep", "-q", "-E", f'^revision[^=]*= "{revision}"', commit]
        + ["--", "migrations/versions"],
        capture_output=True,
        timeout=60,
    )
    return found.returncode == 0


def previous_release() -> tuple[str, str]:
    """(commit, why it is the one) of the previous release; skips without git history.

    Along the first parents (main as it was, not a side branch's own history): the
    parent of the commit (a merge, as a rule) that added the newest migration file;
    should that file have been renamed since (a re-chained migration keeps its
    revision), the first parent further back whose migrations lack the head revision.
    """
    if GIT.missing:
        pytest.skip(f"{GIT.missing}: the previous release cannot be exported")
    newest = max(p.name for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    head = head_revision() or ""
    try:
        added = _git(
            "log",
            "--first-parent",
            "--diff-filter=A",
            "--format=%H",
            "-1",
            "--",
            f"migrations/versions/{newest}",
        )
        if not added:
            pytest.skip(f"no git history of migrations/versions/{newest} (not a git clone?)")
        touching = [added] + _git(
            "log", "--first-parent", "--format=%H", f"{added}^", "--", "migrations/versions"
        ).split()
        for commit in touching:
            parent = _git("rev-parse", "--verify", f"{commit}^")
            if not _has_revision(parent, head):
                return parent, f"the parent of {commit[:10]}, which added {newest} ({head})"
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"git history not available (a shallow clone?): {exc.stderr.strip()}")
    pytest.skip(f"no commit in the history lacks the head revision {head}")


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's packages, exported with ``git archive``."""
    commit, _ = previous_release()
    target = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(
        [str(GIT), "-C", str(ROOT), "archive", "--format=tar", commit, *PACKAGES],
        capture_output=True,
        check=True,
        timeout=120,
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture
def shared_schema(tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url("postgresql", tmp_path, schema=f"mwl_upgrade_{os.getpid()}")


def imported_from(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """Where each package comes from in a new interpreter with ``env``, and its head."""
    code = "import importlib\n" + "".join(
        f"print({name!r}, importlib.import_module({name!r}).__file__)\n" for name in PACKAGES
    )
    # The migrations' head through Alembic itself (older trees lack head_revision).
    code += (
        "from pathlib import Path\nfrom alembic.config import Config\n"
        "from alembic.script import ScriptDirectory\nimport migrations\nconfig = Config()\n"
        "config.set_main_option('script_location', str(Path(migrations.__file__).parent))\n"
        "print('head', ScriptDirectory.from_config(config).get_current_head())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def answers_for_both(old: Broker, head: Broker, feeders: list[Feeder], day: dt.date) -> None:
    """Wait until each node answers the orders the other one took after the migration."""
    taken_before = set(feeders[0].accepted())
    deadline = time.monotonic() + 60
    answered: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        by_old = feeders[0].accepted() - taken_before
        by_head = feeders[1].accepted()
        answered = {
            "old": ct_accessions(old.dicom_port, day, AE_TITLE),
            "head": ct_accessions(head.dicom_port, day, AE_TITLE),
        }
        if len(by_old) >= 5 and len(by_head) >= 5:
            if by_head <= answered["old"] and by_old <= answered["head"]:
                return
        time.sleep(0.2)
    pytest.fail(f"the nodes do not answer for each other: {answered}")


def _probe(broker: Broker, path: str) -> tuple[int, dict[str, object]]:
    """Status and JSON body of a probe; {} for a body that is not JSON (a 404 page)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{broker.web_port}{path}", timeout=30) as r:
            status, data = r.status, r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, data = exc.code, exc.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, {}


def probes_during_the_upgrade(old: Broker, head: Broker, tree: Path) -> None:
    """/health stays 200 (what the balancer checks); /ready as each release says."""
    assert _probe(head, "/health")[0] == 200
    assert _probe(head, "/ready")[0] == 200
    if _probe(old, "/health")[0] == 404:
        return  # the previous release has no probes yet
    assert _probe(old, "/health")[0] == 200
    status, body = _probe(old, "/ready")
    if "def known_revision" in (tree / "mwl" / "store" / "migrate.py").read_text():
        assert (status, body["database"]) == (200, "newer schema")
    else:
        # Before this release: the old node calls itself unready once the schema is
        # migrated (docs/upgrading.md: balancers check /health, not /ready).
        assert (status, body.get("database")) == (503, "not migrated"), body


def test_previous_release_serves_beside_head_on_the_migrated_schema(
    old_tree: Path, shared_schema: str, tmp_path: Path
):
    commit, why = previous_release()
    # PYTHONPATH comes before site-packages, whose editable install points at this
    # working tree: the old tree's packages win, as checked here.
    env_old = broker_env(shared_schema, PYTHONPATH=str(old_tree))
    env_head = broker_env(shared_schema)
    found = imported_from(env_old, old_tree)
    for name in PACKAGES:
        assert found[name].startswith(str(old_tree)), (name, found[name])
    old_head = found["head"]
    assert old_head != head_revision(), f"{commit[:10]} ({why}) has the head's migrations"
    assert imported_from(env_head, tmp_path)["mwl"].startswith(str(ROOT))

    day = dt.date.today()
    engine = make_engine(shared_schema)
    old = start_broker(env_old, old_tree)
    head: Broker | None = None
    feeders = [Feeder(old.hl7_port, day, numbers(0, 2)).start()]
    try:
        assert current_revision(engine) == old_head  # the old code migrated it
        feeders[0].wait_for(20)
        # The head node migrates the schema while the old one takes orders.
        head = start_broker(env_head, tmp_path)
        assert current_revision(engine) == head_revision()
        feeders.append(Feeder(head.hl7_port, day, numbers(1, 2)).start())
        answers_for_both(old, head, feeders, day)
        probes_during_the_upgrade(old, head, old_tree)
    finally:
        for feeder in feeders:
            feeder.finish()
        old_exit = old.stop()
        head_exit = head.stop() if head is not None else 0
    assert (old_exit, head_exit) == (0, 0), old.output[-20:]
    for feeder in feeders:
        assert not feeder.errors, feeder.errors
        assert set(feeder.acks.values()) == {"AA"}, feeder.acks
    accepted = feeders[0].accepted() | feeders[1].accepted()
    assert len(accepted) >= 40

    # Nothing lost, nothing twice: one stored message and one procedure per AA.
    with engine.connect() as connection:
        procedures = dict(
            connection.execute(
                select(RequestedProcedure.accession_number, func.count())
                .where(RequestedProcedure.accession_number.like("RUACC%"))
                .group_by(RequestedProcedure.accession_number)
            ).all()
        )
        messages = connection.scalar(
            select(func.count())
            .select_from(Hl7Message)
            .where(Hl7Message.message_control_id.like("RU%"))
        )
    engine.dispose()
    assert accepted <= set(procedures) and set(procedures.values()) == {1}
    assert messages == len(procedures)
    restart_old(env_old, old_tree, day, accepted)


def restart_old(env: dict[str, str], tree: Path, day: dt.date, accepted: set[str]) -> None:
    """Start the old release again, now on the head-migrated schema."""
    if "def known_revision" in (tree / "mwl" / "store" / "migrate.py").read_text():
        node = start_broker(env, tree)
        try:
            assert accepted <= ct_accessions(node.dicom_port, day, AE_TITLE)
            assert any("newer than this release" in line for line in node.output)
        finally:
            assert node.stop() == 0
        return
    # A release from before known_revision: its start-up migration does not know
    # the head's revision and stops (docs/upgrading.md: once the schema is
    # migrated, a stopped old node is upgraded, not restarted).
    process = subprocess.run(
        [sys.executable, "-m", "mwl.cli", "serve"],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode != 0
    assert "Can't locate revision" in process.stderr, process.stderr[-2000:]
