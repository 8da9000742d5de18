"""`mwl serve`: an HL7 order in, MWL-RS and MPPS-RS over HTTP, the status to the RIS."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from mwl.dicom.dicomweb import search_identifier
from mwl.hl7.client import send_messages
from tests.serve import ADMIN_PASSWORD, broker_env, run_mwl, start_broker

from .conftest import hl7_field, n_create_dataset, n_set_dataset, reference, wait_until

pytestmark = pytest.mark.e2e

ORDER = Path(__file__).resolve().parents[2] / "samples" / "hl7" / "orm_o01_nw.hl7"
STUDY = "1.2.826.0.1.3680043.10.543.20261121.1"  # what the sample order says
DICOM_JSON = "application/dicom+json"


def _http(
    method: str, url: str, token: str, body: Dataset | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body.to_json_dict()).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Accept", DICOM_JSON)
    if data is not None:
        request.add_header("Content-Type", DICOM_JSON)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def _c_find(address: tuple[str, int], identifier: Dataset) -> list[Dataset]:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate(address[0], address[1], ae_title="MWLTEST")
    assert assoc.is_established
    found = []
    try:
        for status, answer in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
            if status and status.Status in (0xFF00, 0xFF01):
                found.append(answer)
    finally:
        assoc.release()
    return found


def test_serve_answers_mwl_rs_and_mpps_rs_and_reports_to_the_ris(database_url, tmp_path, ris):
    env = broker_env(
        database_url,
        MWL_RIS_HOST="127.0.0.1",
        MWL_RIS_PORT=str(ris.port),
        MWL_RIS_POLL_INTERVAL_SECONDS="0.05",
        MWL_RIS_RETRY_INITIAL_SECONDS="0.05",
        MWL_RIS_RETRY_MAX_SECONDS="0.2",
    )
    added = run_mwl(["user", "add", "tech", "--role", "editor"], env, tmp_path, ADMIN_PASSWORD)
    assert added.returncode == 0, added.stderr
    made = run_mwl(["token", "add", "tech", "--name", "dicomweb"], env, tmp_path)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    broker = start_broker(env, tmp_path)
    try:
        (ack,) = send_messages(
            "127.0.0.1", broker.hl7_port, [ORDER.read_bytes().replace(b"\n", b"\r")]
        )
        assert b"MSA|AA" in ack
        base = f"http://127.0.0.1:{broker.web_port}/dicomweb"
        query = [("StudyInstanceUID", STUDY), ("includefield", "all")]
        search = (
            f"{base}/modality-scheduled-procedure-steps?StudyInstanceUID={STUDY}&includefield=all"
        )

        status, headers, body = _http("GET", search, token)
        assert status == 200
        assert headers["Content-Type"].startswith(DICOM_JSON)
        (item,) = [Dataset.from_json(d) for d in json.loads(body)]
        (found,) = _c_find(("127.0.0.1", broker.dicom_port), search_identifier(query))
        assert item == found  # element by element, over both real listeners
        sps_id = str(item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID)

        uid = generate_uid()
        url = f"{base}/modality-performed-procedure-steps/{uid}"
        status, headers, _ = _http("POST", url, token, n_create_dataset(reference(STUDY, sps_id)))
        assert status == 201
        assert headers["Location"].endswith(f"/dicomweb/modality-performed-procedure-steps/{uid}")
        status, _, body = _http("GET", search + "&00400100.00400020=STARTED", token)
        assert status == 200 and len(json.loads(body)) == 1
        status, _, _ = _http("POST", url + "?update", token, n_set_dataset("COMPLETED"))
        assert status == 200
        assert _http("GET", search, token)[0] == 204  # completed steps are hidden

        wait_until(lambda: len(ris.accepted) == 2, what="two status messages")
        assert [hl7_field(p, "ORC", 5) for _, p in ris.accepted] == ["IP", "CM"]
        assert hl7_field(ris.accepted[0][1], "OBR", 20) == sps_id
        status, _, body = _http("GET", url + "?includefield=PerformedProcedureStepStatus", token)
        assert status == 200
        assert json.loads(body) == [{"00400252": {"vr": "CS", "Value": ["COMPLETED"]}}]
    finally:
        code = broker.stop()
    assert code == 0
