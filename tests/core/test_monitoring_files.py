"""The alert rules and the Grafana dashboard in docs/monitoring: valid, and about real metrics.

promtool (Debian's prometheus package) checks the rules and runs their unit tests
(``mwl-alerts.test.yml``: the database-down, outbox, silent-feed and failing-query
alerts fire on made-up series). Every ``mwl_*`` name in the rules and the dashboard
must be a series the broker exposes, so a renamed metric cannot leave a dead panel
or an alert that never fires.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Metric
from sqlalchemy.engine import Engine

from mwl.operations import metrics
from mwl.store.engine import make_session_factory
from tests.peers import PROMTOOL

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
RULES = DOCS / "mwl-alerts.yml"
RULE_TESTS = DOCS / "mwl-alerts.test.yml"
DASHBOARD = DOCS / "mwl-dashboard.json"
NAME = re.compile(r"\bmwl_[a-z0-9_]+")
REQUIRED = (
    "mwl_hl7_messages_total",
    "mwl_dicom_cfind_total",
    "mwl_dicom_associations_open",
    "mwl_outbox_pending",
)


def _sample_names(families: Iterator[Metric]) -> set[str]:
    names = set()
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        else:
            names.add(family.name)
    return names


@pytest.fixture
def exposed(engine: Engine) -> set[str]:
    """Every series name the registry exposes, the database's gauges included."""
    metrics.watch_database(engine, make_session_factory(engine))
    return _sample_names(metrics.REGISTRY.collect())


def _expressions(dashboard: dict) -> list[str]:
    found = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    found += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def test_the_required_names_are_exposed(exposed):
    assert set(REQUIRED) <= exposed
    assert "mwl_database_up" in exposed
    assert "mwl_outbox_oldest_pending_age_seconds" in exposed


@PROMTOOL.required
def test_promtool_accepts_the_rules():
    done = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


@PROMTOOL.required
def test_the_alerts_fire_on_their_unit_tests():
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DOCS,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_name_only_exposed_metrics(exposed):
    names = set(NAME.findall(RULES.read_text(encoding="utf-8")))
    assert {"mwl_database_up", "mwl_outbox_oldest_pending_age_seconds"} <= names
    assert names <= exposed, sorted(names - exposed)


def test_the_dashboard_parses_and_names_only_exposed_metrics(exposed):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = _expressions(dashboard)
    assert len(dashboard["panels"]) >= 10
    names = {name for expression in expressions for name in NAME.findall(expression)}
    assert names <= exposed, sorted(names - exposed)
    # Every recorded metric has a panel.
    shown = {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}
    recorded = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exposed if n.startswith("mwl_")}
    assert recorded <= shown, sorted(recorded - shown)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
