"""MPPS-RS (PS3.18 15.4-15.6) against DIMSE MPPS: the same step statuses and RIS messages.

Two brokers on two databases holding the same worklist, each with its own RIS (a
real MLLP listener): one gets N-CREATE and N-SET from pynetdicom, the other the
Create and Update transactions over the web app with the same attribute lists as
DICOM JSON. The scheduled steps must end in the same statuses and the RIS must get
the same messages (but for the message control IDs and the times of sending).
"""

from __future__ import annotations

import copy
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.tokens import create_token
from mwl.config import Settings
from mwl.dicom.dicomweb import DicomWebService
from mwl.hl7.sender import OutboxSender
from mwl.orders.apply import apply_order
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import User
from tests.databases import migrated_database_url
from web import create_app

from .conftest import (
    ORDERS,
    STUDY_1,
    STUDY_2,
    RisReceiver,
    n_create,
    n_create_dataset,
    n_set,
    n_set_dataset,
    reference,
    step_statuses,
    wait_until,
)

PATH = "/dicomweb/modality-performed-procedure-steps"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
# What differs between two runs of the same events: MSH-7 and other times, MSH-10.
_TIMESTAMP = re.compile(rb"\d{14}(\.\d+)?[+-]\d{4}")


@dataclass
class RestSide:
    """A broker on its own database reached over MPPS-RS, with its RIS."""

    client: FlaskClient
    editor: str
    viewer: str
    ris: RisReceiver
    settings: Settings
    readers: sessionmaker[Session]
    writers: sessionmaker[Session]

    def deliver(self, count: int) -> None:
        """Run this broker's RIS sender until its RIS accepted ``count`` messages.

        Only for a while: on PostgreSQL the sender's lease is an advisory lock, which
        is per database server database, and both brokers here share one (in two
        schemas); the DIMSE broker's sender must get it afterwards.
        """
        sender = OutboxSender(self.settings, self.writers)
        sender.start()
        try:
            wait_until(lambda: len(self.ris.accepted) == count, what="the REST broker's messages")
        finally:
            sender.shutdown()

    def post(self, uid: str, dataset: Dataset | dict | bytes, *, update: bool = False, **kw):
        token = kw.pop("token", self.editor)
        body = dataset if isinstance(dataset, bytes) else None
        payload = dataset.to_json_dict() if isinstance(dataset, Dataset) else dataset
        return self.client.post(
            f"{PATH}/{uid}" + ("?update" if update else ""),
            data=body if body is not None else json.dumps(payload),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": kw.pop("content_type", DICOM_JSON),
                "Accept": DICOM_JSON,
            },
        )

    def get(self, uid: str, query: str = "", token: str = "", accept: str = DICOM_JSON):
        return self.client.get(
            f"{PATH}/{uid}{query}",
            headers={"Authorization": f"Bearer {token or self.viewer}", "Accept": accept},
        )


def _second_database(database_url: str, tmp_path: Path) -> Iterator[str]:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    directory = tmp_path / "rest"
    directory.mkdir()
    yield from migrated_database_url(backend, directory, f"mwl_dicomweb_{os.getpid()}")


@pytest.fixture
def rest_side(
    database_url: str, tmp_path: Path, broker_settings: Settings, ris: RisReceiver
) -> Iterator[RestSide]:
    """The REST broker: a database of its own with :data:`ORDERS`, its own RIS."""
    urls = _second_database(database_url, tmp_path)
    url = next(urls)
    engine: Engine = make_engine(url)
    own_ris = RisReceiver()
    own_ris.start()
    settings = broker_settings.replace(database_url=url, ris_port=own_ris.port)
    writers = make_session_factory(engine, writer=True)
    for order in ORDERS:
        with writers.begin() as session:
            apply_order(session, order)
    with writers.begin() as session:
        session.add(User(username="rest-editor", password_hash="-", role="editor"))
        session.add(User(username="rest-viewer", password_hash="-", role="viewer"))
        session.flush()
        editor = create_token(session, "rest-editor", "mpps-rs test")
        viewer = create_token(session, "rest-viewer", "mpps-rs test")
    readers = make_session_factory(engine)
    app = create_app(
        settings,
        readers,
        writer_factory=writers,
        config={"TESTING": True},
        dicomweb_service=DicomWebService(settings, readers, writers),
    )
    try:
        yield RestSide(app.test_client(), editor, viewer, own_ris, settings, readers, writers)
    finally:
        own_ris.stop()
        engine.dispose()
        urls.close()


def _normalised(messages: list[tuple[str, bytes]]) -> list[bytes]:
    out = []
    for control_id, payload in messages:
        text = payload.replace(control_id.encode(), b"<MSH-10>")
        out.append(_TIMESTAMP.sub(b"<TS>", text))
    return out


def test_rest_mpps_gives_the_same_statuses_and_ris_messages_as_dimse(
    start_broker, broker_settings, writers, ris, rest_side
):
    uid = generate_uid()
    created = n_create_dataset(reference(STUDY_2, "S2"), reference(STUDY_2, "S3"), modality="MR")
    finished = n_set_dataset("COMPLETED")

    response = rest_side.post(uid, created)
    assert response.status_code == 201, response.json
    assert response.headers["Location"].endswith(f"{PATH}/{uid}")
    assert step_statuses(rest_side.readers)["S2"] == "STARTED"
    response = rest_side.post(uid, finished, update=True)
    assert response.status_code == 200, response.json
    rest_side.deliver(2)

    dimse = start_broker(broker_settings)
    assert n_create(dimse.address, created, uid).code == 0
    assert n_set(dimse.address, finished, uid).code == 0
    wait_until(lambda: len(ris.accepted) == 2, what="two messages from the DIMSE broker")

    assert step_statuses(rest_side.readers) == step_statuses(writers)
    assert step_statuses(writers)["S2"] == "COMPLETED"
    assert _normalised(rest_side.ris.accepted) == _normalised(ris.accepted)
    assert [p.split(b"\r")[0][:8] for _, p in ris.accepted] == [b"MSH|^~\\&"] * 2

    # Retrieve (N-GET): the attribute list as created, with the N-SET merged in.
    got = rest_side.get(uid)
    assert got.status_code == 200
    (dataset,) = [Dataset.from_json(d) for d in got.json]
    assert dataset.PerformedProcedureStepStatus == "COMPLETED"
    assert dataset.PerformedProcedureStepEndTime == "093000"
    assert dataset.SOPInstanceUID == uid
    assert str(dataset.PatientName) == "Müller^Hans"
    only = rest_side.get(uid, "?includefield=00400252,PatientName")
    assert set(only.json[0]) == {"00400252", "00100010"}
    xml = rest_side.get(uid, "?includefield=PerformedProcedureStepStatus", accept=DICOM_XML)
    assert xml.status_code == 200 and xml.mimetype == DICOM_XML
    root = ET.fromstring(xml.data)
    (status,) = root.findall("{http://dicom.nema.org/PS3.19/models/NativeDICOM}DicomAttribute")
    assert (status.get("tag"), status.get("keyword")) == (
        "00400252",
        "PerformedProcedureStepStatus",
    )
    assert [v.text for v in status] == ["COMPLETED"]


def test_rest_mpps_refusals_are_the_dimse_ones_as_http(rest_side, ris):
    uid = generate_uid()
    created = n_create_dataset(reference(STUDY_1, "S1"))

    missing = copy.deepcopy(created)
    del missing.PerformedStationAETitle
    response = rest_side.post(uid, missing)
    assert response.status_code == 400
    assert "PerformedStationAETitle is missing" in response.json["error"]

    assert rest_side.post(uid, created, token=rest_side.viewer).status_code == 403
    assert rest_side.post(uid, created).status_code == 201
    duplicate = rest_side.post(uid, created)
    assert duplicate.status_code == 409

    changed_patient = Dataset()
    changed_patient.PatientID = "OTHER"
    refused = rest_side.post(uid, changed_patient, update=True)
    assert refused.status_code == 409
    assert "may not change PatientID" in refused.json["error"]

    unknown = rest_side.post(generate_uid(), n_set_dataset("COMPLETED"), update=True)
    assert unknown.status_code == 404
    no_end = rest_side.post(uid, n_set_dataset("COMPLETED", end=False), update=True)
    assert no_end.status_code == 400
    assert rest_side.post(uid, n_set_dataset("DISCONTINUED"), update=True).status_code == 200
    final = rest_side.post(uid, n_set_dataset("COMPLETED"), update=True)
    assert final.status_code == 409

    assert rest_side.post("not-a-uid", created).status_code == 400
    assert rest_side.post(generate_uid(), b"{not json").status_code == 400
    assert rest_side.post(generate_uid(), b"[{}, {}]").status_code == 400
    wrong_type = rest_side.post(generate_uid(), created, content_type="application/dicom+xml")
    assert wrong_type.status_code == 415
    other = copy.deepcopy(created)
    other.SOPInstanceUID = generate_uid()
    assert rest_side.post(generate_uid(), other).status_code == 400

    assert rest_side.get(generate_uid()).status_code == 404
    assert rest_side.get(uid, "?includefield=all&includefield=PatientID").status_code == 400
