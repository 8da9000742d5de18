"""Debian's Prometheus scrapes a real ``mwl serve`` after HL7, C-FIND and MPPS traffic.

The counters are read back through Prometheus's own HTTP API (``/api/v1/query``), so
the exposition format, the bearer token and the metric names are what a hospital's
Prometheus sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from mwl.hl7.client import send_messages
from tests.mpps.conftest import n_create, n_create_dataset, n_set, n_set_dataset, reference
from tests.peers import PROMETHEUS
from tests.prometheus import running_prometheus
from tests.scu import c_find
from tests.serve import AE_TITLE, broker_env, start_broker

pytestmark = [pytest.mark.e2e, PROMETHEUS.required]

ORDER = Path(__file__).resolve().parents[2] / "samples" / "hl7" / "orm_o01_nw.hl7"
STUDY = "1.2.826.0.1.3680043.10.543.20261121.1"  # what the sample order says
UNSUPPORTED = b"MSH|^~\\&|RIS|HOSP|MWL|HOSP|20261121090000||ZZZ^Z99|CTRL-ZZZ|P|2.5\r"
TOKEN = "monitoring-test-token"


def _worklist_query() -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    sps = Dataset()
    sps.ScheduledStationAETitle = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepStartDate = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def test_prometheus_reads_the_counters_of_a_scripted_run(database_url, tmp_path):
    env = broker_env(
        database_url,
        MWL_METRICS_TOKEN=TOKEN,
        MWL_DICOM_AE_PROFILES=json.dumps([{"ae_title": "CT01"}]),
        MWL_RETENTION_INTERVAL_SECONDS="0",
    )
    broker = start_broker(env, tmp_path)
    try:
        order = ORDER.read_bytes().replace(b"\n", b"\r")
        acks = send_messages("127.0.0.1", broker.hl7_port, [order, UNSUPPORTED])
        assert b"MSA|AA" in acks[0]
        assert b"MSA|AA" not in acks[1]
        matches, status = c_find(broker.dicom_port, _worklist_query(), calling_ae="CT01")
        assert (len(matches), status) == (1, 0)
        sps_id = str(matches[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepID)
        # An AE title no profile names: counted, but under "other".
        assert c_find(broker.dicom_port, _worklist_query(), calling_ae="ROGUE1")[1] == 0
        address = ("127.0.0.1", broker.dicom_port)
        uid = generate_uid()
        assert n_create(address, n_create_dataset(reference(STUDY, sps_id)), uid).code == 0
        assert n_set(address, n_set_dataset("COMPLETED"), uid).code == 0
        # An N-SET for an MPPS the broker never created is refused, and counted so.
        assert n_set(address, n_set_dataset("COMPLETED"), generate_uid()).code != 0

        with running_prometheus(
            tmp_path / "prometheus", f"127.0.0.1:{broker.web_port}", TOKEN
        ) as prometheus:
            assert prometheus.wait_for('up{job="mwl"}', 1) == 1, prometheus.query("up")
            expected = {
                'mwl_hl7_messages_total{type="ORM^O01",outcome="AA"}': 1,
                'sum(mwl_hl7_messages_total{type="other"})': 1,
                'sum(mwl_hl7_messages_total{outcome="AA",type="other"})': None,
                "mwl_hl7_ack_seconds_count": 2,
                'mwl_dicom_cfind_total{calling_ae="CT01",status="success"}': 1,
                'mwl_dicom_cfind_total{calling_ae="other",status="success"}': 1,
                'count(mwl_dicom_cfind_total{calling_ae="ROGUE1"})': None,
                "mwl_dicom_cfind_duration_seconds_count": 2,
                "mwl_dicom_cfind_matches_sum": 2,
                'mwl_dicom_mpps_total{operation="N-CREATE",status="IN PROGRESS"}': 1,
                'mwl_dicom_mpps_total{operation="N-SET",status="COMPLETED"}': 1,
                'mwl_dicom_mpps_total{operation="N-SET",status="refused"}': 1,
                "mwl_dicom_associations_open": 0,
                "mwl_outbox_pending": 0,
                "mwl_database_up": 1,
            }
            for expression, value in expected.items():
                if value is None:
                    assert prometheus.value(expression) is None, expression
                else:
                    assert prometheus.wait_for(expression, value) == value, expression

            # An association held open is seen as one, and gone once released.
            ae = AE(ae_title="CT01")
            ae.add_requested_context(ModalityWorklistInformationFind)
            held = ae.associate("127.0.0.1", broker.dicom_port, ae_title=AE_TITLE)
            assert held.is_established
            try:
                assert prometheus.wait_for("mwl_dicom_associations_open", 1) == 1
            finally:
                held.release()
            assert prometheus.wait_for("mwl_dicom_associations_open", 0) == 0
    finally:
        code = broker.stop()
    assert code == 0
