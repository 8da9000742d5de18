"""MWL-RS Search (PS3.18 14.4) against DCMTK findscu on the same worklist, element by element.

The REST side is the web app with the service the composition root lends it; the
DIMSE side is the running SCP, asked by ``/usr/bin/findscu`` with the Identifier the
query parameters mean (written to a query file). Both run on the sample worklist
of tests/dicom/conftest.py, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy.engine import Engine

from mwl.admin.tokens import create_token
from mwl.config import Settings
from mwl.dicom.dicomweb import FUZZY_WARNING, DicomWebService, search_identifier
from mwl.dicom.scp import WorklistScp
from mwl.store.engine import make_session_factory
from mwl.store.models import User
from tests.dicom.key_cases import KEY_CASES
from tests.peers import FINDSCU
from web import create_app

pytestmark = [pytest.mark.e2e, FINDSCU.required]

TIMEOUT = 30
PATH = "/dicomweb/modality-scheduled-procedure-steps"
SPS = "ScheduledProcedureStepSequence"
# Keywords and tags by the same path: ScheduledProcedureStepSequence is 00400100.
_TAGS = {"Modality": "00080060", "ScheduledProcedureStepStartDate": "00400002"}


def rest_params(case: dict[str, str]) -> list[tuple[str, str]]:
    """A key case as MWL-RS query parameters: SPS keys by tag path or keyword path."""
    out = []
    for key, value in case.items():
        if key.startswith("sps_"):
            keyword = key[4:]
            name = f"00400100.{_TAGS[keyword]}" if keyword in _TAGS else f"{SPS}.{keyword}"
        else:
            name = key
        out.append((name, value))
    return out


@pytest.fixture(scope="module")
def rest(module_engine: Engine, module_settings: Settings) -> Iterator[tuple[FlaskClient, str]]:
    """The web app lent the DICOMweb service, and a viewer's API token."""
    readers = make_session_factory(module_engine)
    writers = make_session_factory(module_engine, writer=True)
    with writers.begin() as session:
        session.add(User(username="rest-viewer", password_hash="-", role="viewer"))
        session.flush()
        token = create_token(session, "rest-viewer", "dicomweb test")
    app = create_app(
        module_settings,
        readers,
        writer_factory=writers,
        config={"TESTING": True},
        dicomweb_service=DicomWebService(module_settings, readers, writers),
    )
    yield app.test_client(), token


def get(rest: tuple[FlaskClient, str], params: list[tuple[str, str]], **headers: str):
    client, token = rest
    return client.get(
        PATH,
        query_string=params,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json", **headers},
    )


def findscu(address: tuple[str, int], out: Path, identifier: Dataset) -> tuple[str, list[Dataset]]:
    """Run DCMTK ``findscu -W -X`` with ``identifier`` as its query file."""
    out.mkdir(parents=True, exist_ok=True)
    query = out / "query.dcm"
    identifier = Dataset(identifier)
    identifier.file_meta = FileMetaDataset()
    identifier.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    identifier.save_as(query, enforce_file_format=False, implicit_vr=False, little_endian=True)
    args = [str(FINDSCU), "-v", "-W", "-aet", "DCMTKSCU", "-aec", "MWLTEST"]
    args += ["-to", "20", "-ta", "20", "-td", "20", "-X", "-od", str(out)]
    args += [address[0], str(address[1]), str(query)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    done = subprocess.run(args, capture_output=True, timeout=TIMEOUT, env=env, check=False)
    log = (done.stdout + done.stderr).decode("latin-1")
    final = re.search(r"Received Final Find Response \(([^)]*)\)", log)
    assert final, log
    return final.group(1), [dcmread(f) for f in sorted(out.glob("rsp*.dcm"))]


def assert_same_items(rest_items: list[dict], responses: list[Dataset]) -> None:
    """The same datasets in the same order: every element, tag, VR and value, nested too."""
    from_rest = [Dataset.from_json(item) for item in rest_items]
    assert len(from_rest) == len(responses)
    for ours, theirs in zip(from_rest, responses, strict=True):
        assert [e.tag for e in ours] == [e.tag for e in theirs]
        assert ours.to_json_dict() == theirs.to_json_dict()
        assert ours == theirs


CASES = [
    *KEY_CASES,
    # More shapes than the shared cases: several values, a range open at one end, a
    # key on a return-only sequence, a status, a key ignored (0xFF01 on DIMSE).
    ({"PatientID": "P1\\P2"}, ["S1", "S2", "S3"]),
    ({"sps_ScheduledProcedureStepStartDate": "20261122-"}, ["S3", "S4"]),
    ({"sps_ScheduledProcedureStepStatus": "SCHEDULED"}, None),
    ({"PatientName": "*", "sps_Modality": "MR"}, ["S2", "S3"]),
    ({"SpecialNeeds": "wheelchair"}, None),
]


@pytest.mark.parametrize(("case", "expected"), CASES)
def test_rest_search_returns_what_findscu_gets(scp: WorklistScp, rest, tmp_path, case, expected):
    params = rest_params(case)
    response = get(rest, params)
    status, responses = findscu(scp.address, tmp_path, search_identifier(params))
    assert status == "Success"
    if not responses:
        assert response.status_code == 204
        return
    assert response.status_code == 200, response.json
    assert response.mimetype == "application/dicom+json"
    assert_same_items(response.json, responses)
    if expected is not None:
        got = [d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for d in responses]
        assert got == expected


@pytest.mark.parametrize(
    "params",
    [
        [("PatientID", "P2"), ("includefield", "PatientName,00100030")],
        [("00100020", "P3"), ("includefield", "all")],
        [("AccessionNumber", "ACC*"), ("includefield", f"{SPS}.Modality")],
    ],
)
def test_includefield_forms_agree_with_findscu(scp, rest, tmp_path, params):
    response = get(rest, params)
    _, responses = findscu(scp.address, tmp_path, search_identifier(params))
    assert response.status_code == 200
    assert_same_items(response.json, responses)


def test_paging_is_stable_and_complete(rest):
    whole = get(rest, [])
    assert whole.status_code == 200
    everything = [item["00400100"]["Value"][0]["00400009"]["Value"][0] for item in whole.json]
    assert len(everything) >= 4
    pages: list[str] = []
    for offset in range(0, len(everything) + 2, 2):
        page = get(rest, [("offset", str(offset)), ("limit", "2")])
        if page.status_code == 204:
            break
        pages += [item["00400100"]["Value"][0]["00400009"]["Value"][0] for item in page.json]
    assert pages == everything  # no duplicates, no gaps, the same order


def test_no_match_is_204(rest):
    response = get(rest, [("PatientID", "NOBODY")])
    assert response.status_code == 204
    assert response.data == b""


def test_fuzzymatching_true_is_answered_with_a_warning(rest):
    response = get(rest, [("PatientName", "doe*"), ("fuzzymatching", "true")])
    assert response.status_code in (200, 204)
    warnings = response.headers.getlist("Warning")
    assert any(w.startswith("299 ") and f'"{FUZZY_WARNING}"' in w for w in warnings)
    assert not get(rest, [("fuzzymatching", "false")]).headers.getlist("Warning")


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ([(f"{SPS}.ScheduledProcedureStepStartDate", "2026-13-45")], "not a date"),
        ([("NoSuchKeyword", "x")], "neither a DICOM keyword"),
        ([("00091234", "x")], "not an attribute"),
        ([("PatientID.Modality", "x")], "not a sequence"),
        ([("includefield", "all"), ("includefield", "PatientID")], "only includefield"),
        ([("limit", "0")], "at least 1"),
        ([("offset", "-1")], "whole number"),
        ([("fuzzymatching", "maybe")], "true or false"),
        ([("PatientID", "P1"), ("PatientID", "P2")], "given twice"),
        ([("PregnancyStatus", "four")], "whole numbers"),
        ([("PixelData", "x")], "cannot be matched on"),
        ([("FFFEE000", "x")], "not an attribute"),
        ([("PatientID", "P\x001")], "NUL"),
    ],
)
def test_bad_parameters_are_400_with_a_reason(rest, params, reason):
    response = get(rest, params)
    assert response.status_code == 400
    assert reason in response.json["error"]


NS = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}


def _xml_values(attribute: ET.Element) -> list[str]:
    if attribute.get("vr") == "PN":
        return [
            "^".join(c.text or "" for c in group)
            for name in attribute.findall("d:PersonName", NS)
            for group in name.findall("d:Alphabetic", NS)
        ]
    return [v.text or "" for v in attribute.findall("d:Value", NS)]


def _json_values(element: dict) -> list[str]:
    if element["vr"] == "PN":
        return [v["Alphabetic"].rstrip("^") for v in element.get("Value", [])]
    return [str(v) for v in element.get("Value", [])]


def test_multipart_xml_holds_the_same_data_sets(rest):
    params = [("PatientName", "Doe*")]
    as_json = get(rest, params).json
    response = get(rest, params, Accept='multipart/related; type="application/dicom+xml"')
    assert response.status_code == 200
    content_type = response.headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom+xml"; boundary=')
    boundary = content_type.rsplit("boundary=", 1)[1]
    parts = response.data.split(f"--{boundary}".encode())[1:-1]
    assert len(parts) == len(as_json) == 3
    for part, dataset in zip(parts, as_json, strict=True):
        head, _, body = part.partition(b"\r\n\r\n")
        assert b"Content-Type: application/dicom+xml" in head
        root = ET.fromstring(body.strip())
        attributes = {a.get("tag"): a for a in root.findall("d:DicomAttribute", NS)}
        assert sorted(attributes) == sorted(dataset)
        for tag, element in dataset.items():
            assert attributes[tag].get("vr") == element["vr"]
            if element["vr"] != "SQ":
                assert _xml_values(attributes[tag]) == _json_values(element), tag
        sps = attributes["00400100"].find("d:Item", NS)
        assert sps is not None
        sps_json = dataset["00400100"]["Value"][0]
        assert {a.get("tag") for a in sps.findall("d:DicomAttribute", NS)} == set(sps_json)


def test_media_types_not_served_are_406(rest):
    assert get(rest, [], Accept="application/dicom+xml").status_code == 406
    assert get(rest, [], Accept="text/html").status_code == 406
    assert get(rest, [("PatientID", "P1")], Accept="*/*").status_code == 200


def test_a_token_is_required(rest):
    client, _ = rest
    response = client.get(PATH)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_fuzzy_warning_names_the_host(rest):
    response = get(rest, [("fuzzymatching", "true")])
    (warning,) = [w for w in response.headers.getlist("Warning") if FUZZY_WARNING in w]
    assert re.match(r'^299 localhost "', warning)
