"""Retention: per-status delays, stale SCHEDULED steps, batches, dry run, purge command, thread."""

from __future__ import annotations

import datetime as dt
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mwl.domain import MppsStatus, PerformedStep, ScheduledStepReference
from mwl.operations.retention import Housekeeper, RetentionPolicy, purge
from mwl.store.models import (
    OutboxMessage,
    PerformedProcedureStep,
    RequestedProcedure,
    ScheduledProcedureStep,
    mpps_sps,
    utcnow,
)
from mwl.worklist.mpps import create_performed_step, update_performed_step

from .conftest import STUDY_1, STUDY_2, step_statuses, wait_until

POLICY = RetentionPolicy(
    step_days={"CANCELED": 1, "COMPLETED": 7},
    mpps_days={"COMPLETED": 7},
    scheduled_idle_days=30,
    outbox_days=30,
)


def _age_steps(factory: sessionmaker[Session], days: float, **status_by_sps: str) -> None:
    """Give steps a status and a last change ``days`` ago."""
    with factory.begin() as session:
        for sps_id, status in status_by_sps.items():
            session.execute(
                update(ScheduledProcedureStep)
                .where(ScheduledProcedureStep.scheduled_procedure_step_id == sps_id)
                .values(status=status, updated_at=utcnow() - dt.timedelta(days=days))
            )


def _completed_mpps(factory: sessionmaker[Session], study: str, sps_id: str, days: float) -> None:
    uid = generate_uid()
    ref = ScheduledStepReference(study_instance_uid=study, scheduled_procedure_step_id=sps_id)
    with factory.begin() as session:
        create_performed_step(
            session,
            PerformedStep(uid, MppsStatus.IN_PROGRESS, references=(ref,)),
            outbox_destination="ris",
        )
        update_performed_step(
            session,
            PerformedStep(uid, MppsStatus.COMPLETED, end=dt.datetime(2026, 11, 1, 10)),
            outbox_destination="ris",
        )
    with factory.begin() as session:
        session.execute(
            update(PerformedProcedureStep)
            .where(PerformedProcedureStep.sop_instance_uid == uid)
            .values(updated_at=utcnow() - dt.timedelta(days=days))
        )


def _count(factory: sessionmaker[Session], model: type) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_purge_by_status_and_age(writers):
    _completed_mpps(writers, STUDY_1, "S1", days=8)  # S1 COMPLETED, MPPS 8 days old
    _age_steps(writers, 8, S1="COMPLETED")
    _age_steps(writers, 2, S2="CANCELED")
    _age_steps(writers, 2, S3="COMPLETED")  # completed, but only 2 days ago: kept
    assert _count(writers, mpps_sps) == 1

    planned = purge(writers, POLICY, dry_run=True)

    assert (planned.steps, planned.performed_steps) == (2, 1)
    assert len(step_statuses(writers)) == 3  # a dry run deletes nothing

    done = purge(writers, POLICY, batch_size=1)

    assert (done.steps, done.performed_steps, done.procedures) == (2, 1, 1)
    assert step_statuses(writers) == {"S3": "COMPLETED"}
    assert _count(writers, mpps_sps) == 0
    with writers() as session:
        # The requested procedure of S1 had no step left; that of S2/S3 keeps S3.
        studies = session.scalars(select(RequestedProcedure.study_instance_uid)).all()
    assert studies == [STUDY_2]
    # The RIS messages stay until delivered and old.
    assert _count(writers, OutboxMessage) == 2


def test_stale_scheduled_steps_and_delivered_messages(writers):
    with writers.begin() as session:
        old = utcnow() - dt.timedelta(days=40)
        session.execute(
            update(ScheduledProcedureStep)
            .where(ScheduledProcedureStep.scheduled_procedure_step_id == "S1")
            .values(updated_at=old, start_datetime=dt.datetime.now() - dt.timedelta(days=40))
        )
        # S2: untouched for 40 days but scheduled for today: not stale.
        session.execute(
            update(ScheduledProcedureStep)
            .where(ScheduledProcedureStep.scheduled_procedure_step_id == "S2")
            .values(updated_at=old)
        )
    _completed_mpps(writers, STUDY_2, "S3", days=1)
    with writers.begin() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == select(func.min(OutboxMessage.id)).scalar_subquery())
            .values(state="DELIVERED", delivered_at=utcnow() - dt.timedelta(days=31))
        )

    done = purge(writers, POLICY)

    assert (done.steps, done.outbox_messages) == (1, 1)
    assert sorted(step_statuses(writers)) == ["S2", "S3"]
    assert _count(writers, OutboxMessage) == 1


def test_housekeeping_thread(writers, settings):
    _age_steps(writers, 3, S1="CANCELED")
    housekeeper = Housekeeper(
        settings.replace(retention_interval_seconds=0.05, retention_batch_size=10), writers
    )
    housekeeper.start()
    try:
        wait_until(lambda: "S1" not in step_statuses(writers), what="housekeeping purge")
        wait_until(lambda: housekeeper.runs >= 2, what="a second run")
    finally:
        housekeeper.shutdown()
    assert sorted(step_statuses(writers)) == ["S2", "S3"]


def test_two_housekeepers_on_one_database_run_one_at_a_time(writers, settings, monkeypatch):
    # Two brokers on one database: the second stands by while the first holds the
    # lease, and takes over once the first is gone.
    monkeypatch.setattr("mwl.operations.retention.STANDBY_CHECK_SECONDS", 0.05)
    fast = settings.replace(retention_interval_seconds=0.05, retention_batch_size=10)
    first, second = Housekeeper(fast, writers), Housekeeper(fast, writers)
    first.start()
    try:
        wait_until(lambda: first.runs >= 1, what="the first housekeeper's run")
        second.start()
        wait_until(lambda: first.runs >= 4, what="more runs of the first")
        assert second.runs == 0
        first.shutdown()
        wait_until(lambda: second.runs >= 1, what="the second taking over")
    finally:
        first.shutdown()
        second.shutdown()


def _mwl(args: list[str], database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_")}
    env["MWL_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "mwl.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # an `mwl purge` subprocess
def test_mwl_purge_command(writers, database_url, tmp_path):
    _age_steps(writers, 3, S1="CANCELED")

    dry = _mwl(["purge", "--dry-run"], database_url, tmp_path)

    assert dry.returncode == 0, dry.stderr
    assert "would delete 1 scheduled step(s)" in dry.stdout
    assert "S1" in step_statuses(writers)

    real = _mwl(["purge"], database_url, tmp_path)

    assert real.returncode == 0, real.stderr
    assert "deleted 1 scheduled step(s)" in real.stdout
    assert "S1" not in step_statuses(writers)
    # Not a terminal: no progress bar in the output.
    assert "\r[" not in real.stderr


@pytest.mark.slow  # an `mwl purge` subprocess
def test_mwl_purge_shows_a_progress_bar_on_a_terminal(writers, database_url, tmp_path):
    _age_steps(writers, 3, S1="CANCELED", S2="CANCELED")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_")}
    env.update(MWL_DATABASE_URL=database_url, MWL_RETENTION_BATCH_SIZE="1")
    controller, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "mwl.cli", "purge"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=120,
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed, all is read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert process.returncode == 0
    assert "deleted 2 scheduled step(s)" in process.stdout
    assert b"] 1/2" in shown and b"] 2/2" in shown
