"""``MWL_LOG_FORMAT=json``: a real ``mwl serve`` logs one JSON object a line.

The broker gets an order over MLLP (``mwl hl7 send``), two C-FINDs from DCMTK
``findscu`` and a failed web login; every line it logs must be a JSON object with
the documented fields, and the lines of each piece of work must carry its
correlation: the HL7 message's MSH-10, the association's id with its calling AE
title and peer, the web request's id (also in the response's X-Request-ID).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.logs import records
from tests.peers import FINDSCU
from tests.serve import ADMIN_PASSWORD, Broker, WebClient, broker_env, run_mwl, start_broker

pytestmark = pytest.mark.e2e

CONTROL_ID = "JSONLOG0001"
ORDER = (
    f"MSH|^~\\&|RIS|HOSPITAL|MWL|RADIOLOGY|20261120143000||ORM^O01|{CONTROL_ID}|P|2.3.1\r"
    "PID|1||JSONPAT1^^^HOSPITAL^MR||Jsonlog^Testa||19800115|F\r"
    "PV1|1|O\r"
    "ORC|NW|PLCJSON|FILJSON||SC||^^^20261121093000^^R\r"
    "OBR|1|PLCJSON|FILJSON|CTHEAD^CT Head^LOCAL||||||||||||||ACCJSON|RPJSON|SPSJSON||||CT\r"
)
REQUIRED = {"timestamp": str, "level": str, "logger": str, "component": str, "message": str}
_RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _findscu(broker: Broker, calling: str, tmp_path: Path) -> None:
    if FINDSCU.missing:
        pytest.fail(FINDSCU.missing)
    result = subprocess.run(
        [
            str(FINDSCU),
            "-W",
            "-aet",
            calling,
            "-aec",
            broker.ae_title,
            "-k",
            "PatientName=",
            "-k",
            "ScheduledProcedureStepSequence[0].Modality=CT",
            "127.0.0.1",
            str(broker.dicom_port),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _failed_login(broker: Broker) -> str:
    """POST a wrong password; the response's X-Request-ID."""
    web = WebClient(f"http://127.0.0.1:{broker.web_port}")
    _, _, page = web.get("/login")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token, "the login form has a CSRF token"
    data = {"username": "admin", "password": "not the password", "csrf_token": token[1]}
    request = urllib.request.Request(
        web.base + "/login", data=urllib.parse.urlencode(data).encode(), method="POST"
    )
    try:
        with web.opener.open(request, timeout=30) as response:
            request_id = response.headers["X-Request-ID"]
    except urllib.error.HTTPError as exc:
        with exc:
            request_id = exc.headers["X-Request-ID"]
    assert request_id, "the response names its request"
    return str(request_id)


def _one(found: list[dict[str, Any]], what: str) -> dict[str, Any]:
    assert len(found) == 1, f"{what}: {found}"
    return found[0]


def test_every_line_is_json_with_its_correlation(tmp_path: Path):
    # DEBUG (without log_phi): the most lines, and an association's several lines.
    env = broker_env(
        f"sqlite:///{tmp_path / 'mwl.db'}", MWL_LOG_FORMAT="json", MWL_LOG_LEVEL="DEBUG"
    )
    added = run_mwl(["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD)
    assert added.returncode == 0, added.stderr
    broker = start_broker(env, tmp_path)
    try:
        order = tmp_path / "order.hl7"
        order.write_bytes(ORDER.encode("latin-1"))
        sent = run_mwl(["hl7", "send", str(order), "--port", str(broker.hl7_port)], env, tmp_path)
        assert sent.returncode == 0 and "AA" in sent.stdout, sent.stdout + sent.stderr
        _findscu(broker, "CTJSON1", tmp_path)
        _findscu(broker, "CTJSON2", tmp_path)
        request_id = _failed_login(broker)
    finally:
        assert broker.stop() == 0

    # Every line is a JSON object (records() fails on any other) with the fields.
    logged = [r.fields for r in records(broker.output, "json")]
    print("\n".join(broker.output))
    assert len(logged) > 10
    for fields in logged:
        for name, kind in REQUIRED.items():
            assert isinstance(fields.get(name), kind), (name, fields)
        assert _RFC3339_UTC.match(fields["timestamp"]), fields
        assert dt.datetime.fromisoformat(fields["timestamp"]).utcoffset() == dt.timedelta(0)
        assert fields["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert fields["component"], fields
    assert {"cli", "hl7", "dicom", "web"} <= {f["component"] for f in logged}

    # The HL7 message's line names it by MSH-10.
    accepted = _one(
        [f for f in logged if f["component"] == "hl7" and "answered AA" in f["message"]],
        "the order's AA line",
    )
    assert accepted["hl7_control_id"] == accepted["correlation_id"] == CONTROL_ID
    assert accepted["peer"].startswith("127.0.0.1:")
    # The connection's own lines name the sender's address.
    connected = _one(
        [f for f in logged if f["message"].startswith("HL7 connection from")], "the connection"
    )
    assert connected["peer"] == accepted["peer"] and "hl7_control_id" not in connected

    # Each C-FIND line names its association, calling AE title and peer ...
    ids = {}
    for calling in ("CTJSON1", "CTJSON2"):
        find = _one(
            [f for f in logged if f["message"].startswith(f"C-FIND from {calling} ")],
            f"the C-FIND line of {calling}",
        )
        assert find["component"] == "dicom"
        assert find["calling_ae"] == calling and find["called_ae"] == broker.ae_title
        assert find["peer"].startswith("127.0.0.1:")
        assert find["correlation_id"] == find["association"]
        ids[calling] = find["association"]
        # ... as do the association's other lines (accepted, released).
        same = [f for f in logged if f.get("association") == find["association"]]
        assert len(same) >= 3, same
        assert {f["calling_ae"] for f in same} == {calling}
    assert ids["CTJSON1"] != ids["CTJSON2"]

    # The web request's lines carry the id its response gave.
    failed = _one(
        [f for f in logged if f["message"].startswith("failed login for")], "the failed login"
    )
    assert failed["component"] == "web" and failed["level"] == "WARNING"
    assert failed["request_id"] == failed["correlation_id"] == request_id

    # Work outside any association, message or request has no correlation.
    ready = [f for f in logged if f["logger"] == "mwl.cli"]
    assert ready and all("correlation_id" not in f for f in ready)
