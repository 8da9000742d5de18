"""A newcomer's first minutes: start, read the summary, send the samples, query today.

``mwl serve`` prints a short summary before "mwl is ready" (the full settings only
at DEBUG, or with ``mwl settings``); ``mwl samples send`` moves the sample messages
to today and sends them in an order that works; DCMTK's findscu then finds today's
steps, as the README's "Try it" says.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.databases import fresh_database_url
from tests.peers import FINDSCU
from tests.serve import ADMIN_PASSWORD, AE_TITLE, Broker, broker_env, run_mwl, start_broker

pytestmark = pytest.mark.e2e

# The shipped samples' steps, as findscu shows them once moved to today (the cancel
# of ACC0001 leaves it off the worklist).
TODAYS_STEPS = ["ACC0002", "ACC0003", "ACC0005", "ACC0005", "ACC0020"]


def startup(broker: Broker) -> list[str]:
    return broker.output[: broker.output.index("mwl is ready")]


def findscu_today(broker: Broker, modality: str = "") -> tuple[str, list[str]]:
    """findscu -W for every step of today; (final status, accession numbers, sorted)."""
    args = [str(FINDSCU), "-v", "-W", "-aec", AE_TITLE, "-aet", "CT01", "127.0.0.1"]
    args += [str(broker.dicom_port), "-to", "20", "-ta", "20", "-td", "20"]
    sps = "ScheduledProcedureStepSequence[0]"
    args += ["-k", f"{sps}.ScheduledProcedureStepStartDate={dt.date.today():%Y%m%d}"]
    args += ["-k", f"{sps}.Modality={modality}", "-k", "AccessionNumber="]
    done = subprocess.run(
        args, capture_output=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"}
    )
    log = (done.stdout + done.stderr).decode("latin-1")
    final = re.search(r"Received Final Find Response \(([^)]*)\)", log)
    assert final, log
    found = re.findall(r"\(0008,0050\) SH \[([^\] ]+) *\]", log)
    return final[1], sorted(found)


@FINDSCU.required
def test_summary_then_samples_of_today_reach_findscu(tmp_path: Path):
    env = broker_env(f"sqlite:///{tmp_path / 'mwl.db'}")
    broker = start_broker(env, tmp_path)
    try:
        lines = startup(broker)
        # The summary, not the settings: a handful of lines, the first-login hint.
        assert not [line for line in lines if " setting " in line]
        assert len(lines) <= 12, lines
        assert f"database sqlite:///{tmp_path / 'mwl.db'}" in lines
        assert any(
            line.startswith("no web user yet: ") and "mwl user add" in line for line in lines
        )
        assert any(line.startswith("all settings: `mwl settings`") for line in lines)
        assert any(re.fullmatch(r"web page on http://127\.0\.0\.1:\d+/", line) for line in lines)

        sent = run_mwl(["samples", "send", "--port", str(broker.hl7_port)], env, tmp_path)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        files = [line.split()[2].rsplit("/", 1)[-1] for line in sent.stdout.splitlines()]
        assert [line.split()[0] for line in sent.stdout.splitlines()] == ["AA"] * len(files)
        assert files.index("orm_o01_nw.hl7") < files.index("adt_a08_update.hl7")
        assert files[-1] == "orm_o01_ca.hl7"
        assert f"scheduled on {dt.date.today():%Y-%m-%d}" in sent.stderr

        status, accessions = findscu_today(broker)
        assert status == "Success" and accessions == TODAYS_STEPS
        # The README's query: today's CT list.
        assert findscu_today(broker, "CT") == ("Success", ["ACC0005", "ACC0005"])
        # Twice on one day: recognised as resends, nothing changes.
        again = run_mwl(["samples", "send", "--port", str(broker.hl7_port)], env, tmp_path)
        assert again.returncode == 0 and findscu_today(broker) == (status, accessions)
    finally:
        assert broker.stop() == 0


@pytest.fixture
def own_schema(tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url("postgresql", tmp_path, schema=f"mwl_newcomer_{os.getpid()}")


def test_summary_hides_the_password_and_debug_lists_the_settings(own_schema: str, tmp_path: Path):
    # The test server lets the test user in without a password; one in the URL is
    # then never asked for, and must not be shown either.
    url = make_url(own_schema).set(password="not-shown-anywhere")
    env = broker_env(url.render_as_string(hide_password=False), MWL_LOG_LEVEL="DEBUG")
    added = run_mwl(
        ["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    broker = start_broker(env, tmp_path)
    try:
        lines = startup(broker)
        assert f"database {url.render_as_string(hide_password=True)}" in lines
        assert not any("not-shown-anywhere" in line for line in broker.output)
        assert not any(line.startswith("no web user yet") for line in lines)
        assert any("setting hl7_port = 0" in line for line in lines)
    finally:
        assert broker.stop() == 0
