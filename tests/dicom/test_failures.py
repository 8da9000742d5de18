"""C-CANCEL, database failure and start/stop of the SCP, over real associations."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind
from pynetdicom.status import Status
from sqlalchemy import func, select

from mwl.config import Settings
from mwl.dicom.handlers import FAILURE_UNABLE_TO_PROCESS
from mwl.dicom.scp import WorklistScp
from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.errors import SettingsError
from mwl.orders.apply import apply_order
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import QueryLogEntry
from tests.databases import migrated_sqlite_url
from tests.factories import one_step_order
from tests.rawscu import association_rejection

pytestmark = pytest.mark.e2e

MANY = 1500
# The cancel test's answer must take the SCP longer than pynetdicom's way from the first
# response to the C-CANCEL on the wire (ms on a busy machine): at ~25 us per match
# 1,500 matches are all sent within 40 ms, and then Success is the right answer.
MANY_TO_CANCEL = 10000


def many_steps_order(count: int = MANY) -> Order:
    start = dt.datetime(2026, 11, 21, 0, 0)
    steps = tuple(
        ScheduledStep(
            f"M{i:05d}",
            modality="CT",
            scheduled_station_ae_title="CT01",
            start=start + dt.timedelta(minutes=i),
        )
        for i in range(count)
    )
    return Order(
        "NW",
        "SC",
        PatientDemographics("PMANY", "HOSP", "Many^Steps"),
        (RequestedProcedure("", "RPMANY", "ACCMANY", placer_order_number="PLMANY", steps=steps),),
        sending_facility="HOSP",
    )


def test_c_cancel_stops_the_responses(session_factory, settings, identifier):
    with session_factory.begin() as session:
        apply_order(session, many_steps_order(MANY_TO_CANCEL))
    with WorklistScp(settings.replace(dicom_ae_title="MWLTEST"), session_factory) as scp:
        ae = AE(ae_title="CANCELSCU")
        ae.add_requested_context(ModalityWorklistInformationFind)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        assoc = ae.associate(*scp.address, ae_title="MWLTEST")
        assert assoc.is_established
        statuses = []
        try:
            responses = assoc.send_c_find(identifier(), ModalityWorklistInformationFind, msg_id=7)
            for status, _ in responses:
                statuses.append(int(status.Status))
                if len(statuses) == 1:
                    context_id = assoc.accepted_contexts[0].context_id
                    assoc.send_c_cancel(7, context_id)
        finally:
            assoc.release()
    assert statuses[-1] == Status.CANCEL
    assert 1 <= statuses.count(Status.PENDING) < MANY_TO_CANCEL
    with session_factory() as session:
        row = session.scalars(
            select(QueryLogEntry).where(QueryLogEntry.calling_ae_title == "CANCELSCU")
        ).one()
    assert row.status == Status.CANCEL
    assert row.matches == statuses.count(Status.PENDING)


def test_database_failure_gives_unable_to_process_and_logs(
    tmp_path: Path, identifier, find, caplog
):
    # A real database without the schema: every query fails in the driver.
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    settings = Settings(bind_address="127.0.0.1", dicom_port=0, dicom_ae_title="MWLTEST")
    try:
        with WorklistScp(settings, make_session_factory(engine)) as scp:
            result = find(scp.address, identifier(PatientID="P1"))
            again = find(scp.address, identifier(PatientID="P1"))
    finally:
        engine.dispose()
    assert result.final_status == FAILURE_UNABLE_TO_PROCESS
    assert again.final_status == FAILURE_UNABLE_TO_PROCESS  # the server survives
    assert any("worklist query failed" in r.getMessage() for r in caplog.records)
    assert any("could not write the query log" in r.getMessage() for r in caplog.records)


def test_shutdown_closes_the_port(engine, settings, echo):
    scp = WorklistScp(settings.replace(dicom_ae_title="MWLTEST"), make_session_factory(engine))
    scp.start()
    address = scp.address
    try:
        assert echo(address) == Status.SUCCESS
        with pytest.raises(RuntimeError):
            scp.start()
    finally:
        scp.shutdown()
    scp.shutdown()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()
    assert not scp.running


def test_query_log_counts_one_row_per_c_find(engine, settings, find, identifier):
    factory = make_session_factory(engine)
    with WorklistScp(settings.replace(dicom_ae_title="MWLTEST"), factory) as scp:
        for _ in range(3):
            find(scp.address, identifier())
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(QueryLogEntry)) == 3


def test_concurrent_queries_while_orders_are_written(engine, settings, find, identifier):
    """Readers (C-FIND) and a writer (the order service) at once: no query fails or waits out."""
    from concurrent.futures import ThreadPoolExecutor

    writers = make_session_factory(engine, writer=True)
    start = dt.datetime(2026, 11, 21, 8, 0)

    def write_orders() -> int:
        for i in range(30):
            order = one_step_order(
                f"ACCC{i}",
                start + dt.timedelta(minutes=i),
                patient_id=f"PC{i}",
                patient_name=f"Concurrent^{i}",
                modality="MR",
                station="",
                procedure_id=f"RPC{i}",
                placer=f"PLC{i}",
                sps_id=f"SC{i}",
            )
            with writers.begin() as session:
                apply_order(session, order)
        return 30

    def query(_: int) -> tuple[int, int]:
        result = find(scp.address, identifier(sps_Modality="MR"))
        return result.final_status, len(result.identifiers)

    readers = make_session_factory(engine)
    with WorklistScp(settings.replace(dicom_ae_title="MWLTEST"), readers) as scp:
        with ThreadPoolExecutor(max_workers=5) as pool:
            written = pool.submit(write_orders)
            results = list(pool.map(query, range(24)))
            assert written.result(timeout=120) == 30
        final = find(scp.address, identifier(sps_Modality="MR"))
    assert all(status == Status.SUCCESS for status, _ in results)
    assert len(final.identifiers) == 30


def test_many_modalities_at_once_are_all_accepted_up_to_the_limit(engine, settings):
    # pynetdicom alone would refuse the 11th association (its default limit is 10).
    limit = 30
    scp = WorklistScp(
        settings.replace(dicom_ae_title="MWLTEST", dicom_max_associations=limit),
        make_session_factory(engine),
    )
    scp.start()
    open_associations = []
    try:
        for index in range(limit):
            ae = AE(ae_title=f"MOD{index:02d}")
            ae.add_requested_context(ModalityWorklistInformationFind)
            assoc = ae.associate(
                "127.0.0.1",
                scp.address[1],
                ae_title="MWLTEST",
                bind_address=(f"127.0.0.{index + 2}", 0),
            )
            open_associations.append(assoc)
            assert assoc.is_established, f"association {index + 1} refused"
        # Rejected transient, service provider (presentation), local limit exceeded.
        assert association_rejection(scp.address, "ONEMORE", "MWLTEST") == (2, 3, 2)
    finally:
        for assoc in open_associations:
            if assoc.is_established:
                assoc.release()
        scp.shutdown()


def test_by_default_fifty_modalities_and_their_reconnects_are_all_accepted(tmp_path: Path):
    # A modality that reconnects at once may hold a second slot while its released
    # association still counts: 50 modalities need a margin above 50. Each modality
    # is a host of its own (127.0.0.2, .3, ...), as in a department, so the limit per
    # address does not apply. No query is sent, so one database backend is enough.
    url = migrated_sqlite_url(tmp_path)
    engine = make_engine(url)
    scp = WorklistScp(
        Settings(
            database_url=url, bind_address="127.0.0.1", dicom_port=0, dicom_ae_title="MWLTEST"
        ),
        make_session_factory(engine),
    )
    scp.start()
    open_associations = []
    try:
        for index in range(55):
            ae = AE(ae_title=f"MOD{index:02d}")
            ae.add_requested_context(ModalityWorklistInformationFind)
            assoc = ae.associate(
                "127.0.0.1",
                scp.address[1],
                ae_title="MWLTEST",
                bind_address=(f"127.0.0.{index + 2}", 0),
            )
            open_associations.append(assoc)
            assert assoc.is_established, f"association {index + 1} refused"
    finally:
        for assoc in open_associations:
            if assoc.is_established:
                assoc.release()
        scp.shutdown()
        engine.dispose()


def test_max_associations_setting_is_validated():
    with pytest.raises(SettingsError, match="MWL_DICOM_MAX_ASSOCIATIONS"):
        Settings(dicom_max_associations=0)
