"""`mwl serve` as its own process: an HL7 order in, MPPS from a modality, status back to the RIS."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from mwl.hl7.client import send_messages
from tests.serve import broker_env, start_broker

from .conftest import (
    find_sps_ids,
    hl7_field,
    n_create,
    n_create_dataset,
    n_set,
    n_set_dataset,
    reference,
    wait_until,
)

pytestmark = pytest.mark.e2e

ORDER = Path(__file__).resolve().parents[2] / "samples" / "hl7" / "orm_o01_nw.hl7"
STUDY = "1.2.826.0.1.3680043.10.543.20261121.1"  # what the sample order says


def test_serve_reports_mpps_to_the_ris(database_url, tmp_path, ris):
    env = broker_env(
        database_url,
        MWL_RIS_HOST="127.0.0.1",
        MWL_RIS_PORT=str(ris.port),
        MWL_RIS_POLL_INTERVAL_SECONDS="0.05",
        MWL_RIS_RETRY_INITIAL_SECONDS="0.05",
        MWL_RIS_RETRY_MAX_SECONDS="0.2",
    )
    broker = start_broker(env, tmp_path)
    try:
        assert f"RIS status messages to 127.0.0.1:{ris.port}" in broker.output
        order = ORDER.read_bytes().replace(b"\n", b"\r")
        (ack,) = send_messages("127.0.0.1", broker.hl7_port, [order])
        assert b"MSA|AA" in ack
        address = ("127.0.0.1", broker.dicom_port)
        (sps_id,) = find_sps_ids(address, "")
        uid = generate_uid()

        assert n_create(address, n_create_dataset(reference(STUDY, sps_id)), uid).code == 0
        assert find_sps_ids(address, "") == []
        assert n_set(address, n_set_dataset("COMPLETED"), uid).code == 0

        wait_until(lambda: len(ris.accepted) == 2, what="two status messages")
        assert [hl7_field(p, "ORC", 5) for _, p in ris.accepted] == ["IP", "CM"]
        assert hl7_field(ris.accepted[0][1], "OBR", 20) == sps_id
    finally:
        code = broker.stop()
    assert code == 0
