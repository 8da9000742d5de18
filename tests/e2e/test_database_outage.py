"""The database restarting and stopping under load: nothing ACKed is lost, nothing crashes.

A PostgreSQL server of the test's own (tests/own_postgres.py) under ``mwl serve``;
two RIS connections send new orders one after another (each waits for its ACK) and a
modality queries the worklist in a loop, while the server is restarted
(``pg_ctl restart -m fast``) and then stopped for 5 s and started again. Then:

- every message answered AA is stored (its row says AA, its order is there);
- every message not answered AA (AE, or the connection lost) gets AA when resent;
- C-FIND answered success or a failure status (0xC001, never a hang or a crash);
- meanwhile the web page is a 503 page, ``/health`` 200 with the database shown
  down, ``/ready`` 503; the process never ends and serves again by itself.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]
from pynetdicom.status import Status
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from mwl.hl7.mllp import MllpFramer, frame
from mwl.store.models import Hl7Message, RequestedProcedure
from tests.own_postgres import PG_CTL, OwnPostgres
from tests.serve import ADMIN_PASSWORD, AE_TITLE, WebClient, broker_env, run_mwl, start_broker

# About 45 s: out of the default run (-m cluster).
pytestmark = [pytest.mark.e2e, pytest.mark.cluster, PG_CTL.required]

TIMEOUT_S = 15.0
UNABLE_TO_PROCESS = 0xC001


def order(sender: int, number: int) -> tuple[str, bytes]:
    control = f"OUT{sender}{number:05d}"
    n = f"{sender}{number:05d}"
    segments = [
        f"MSH|^~\\&|RIS|HOSPITAL|MWL|RADIOLOGY|20261120143000||ORM^O01|{control}|P|2.3.1",
        f"PID|1||OUTP{n}^^^HOSPITAL^MR||Outage^Patient{n}||19800115|F",
        "PV1|1|O",
        f"ORC|NW|PLC{n}|FIL{n}||SC||^^^20261121093000^^R",
        f"OBR|1|PLC{n}|FIL{n}|CTHEAD^CT Head^LOCAL||||||||||||||ACC{n}|RP{n}|SPS{n}||||CT",
    ]
    return control, "\r".join(segments).encode() + b"\r"


class Ris:
    """One MLLP connection sending, each message after the last one's ACK; reconnects."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.framer = MllpFramer(1 << 20)

    def send(self, payload: bytes) -> str:
        """The ACK code (MSA-1), or "none" when the connection failed first."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S)
                self.framer = MllpFramer(1 << 20)
            self.sock.sendall(frame(payload))
            while True:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                frames = self.framer.feed(data)
                if frames:
                    msa = next(s for s in frames[0].split(b"\r") if s.startswith(b"MSA"))
                    return msa.split(b"|")[1].decode()
        except OSError:
            self.close()
            return "none"

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@dataclass
class Load:
    hl7_port: int
    dicom_port: int
    stop: threading.Event = field(default_factory=threading.Event)
    answers: dict[str, str] = field(default_factory=dict)  # control id -> last ACK code
    payloads: dict[str, bytes] = field(default_factory=dict)
    acked_at: list[float] = field(default_factory=list)  # monotonic times of each AA
    finds: list[tuple[float, float, object]] = field(default_factory=list)  # start, took, status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sender(self, number: int) -> None:
        ris = Ris(self.hl7_port)
        count = 0
        try:
            while not self.stop.is_set():
                count += 1
                control, payload = order(number, count)
                code = ris.send(payload)
                with self.lock:
                    self.payloads[control] = payload
                    self.answers[control] = code
                    if code == "AA":
                        self.acked_at.append(time.monotonic())
                if code != "AA":
                    time.sleep(0.1)
        finally:
            ris.close()

    def modality(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            status = c_find(self.dicom_port)
            with self.lock:
                self.finds.append((started, time.monotonic() - started, status))
            time.sleep(0.1)


def c_find(port: int) -> object:
    """The final status of one C-FIND, or a word for what went wrong instead."""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return "not associated"
    ds = Dataset()
    ds.PatientID = "OUTP100001"
    ds.ScheduledProcedureStepSequence = [Dataset()]
    final: object = "no answer"
    try:
        for status, _ in assoc.send_c_find(ds, ModalityWorklistInformationFind):
            if status and status.Status not in (Status.PENDING, 0xFF01):
                final = status.Status
    finally:
        assoc.release()
    return final


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def wait_until(condition, timeout: float = 30) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``condition()`` held (fails the test after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "not within the time"
        time.sleep(0.1)
    return time.monotonic() - started


def test_restart_and_stop_of_the_database_under_load(own_postgres: OwnPostgres, tmp_path: Path):
    env = broker_env(own_postgres.url)
    added = run_mwl(
        ["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    broker = start_broker(env, tmp_path)
    base = f"http://127.0.0.1:{broker.web_port}"
    web = WebClient(base)
    assert web.login("admin", ADMIN_PASSWORD)[0] == 200
    load = Load(broker.hl7_port, broker.dicom_port)
    threads = [threading.Thread(target=load.sender, args=(n,)) for n in (1, 2)]
    threads.append(threading.Thread(target=load.modality))
    resumed: dict[str, float] = {}
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)
        own_postgres.restart("fast")
        restarted = time.monotonic()
        resumed["restart"] = wait_until(lambda: any(t > restarted for t in load.acked_at))
        time.sleep(1)

        own_postgres.stop("fast")
        stopped = time.monotonic()
        time.sleep(2)
        # Down: the web page says so, /health lives on, /ready does not.
        status, _, page = web.get("/")
        assert status == 503, "\n".join(broker.output[-60:])
        assert "database cannot be reached" in page
        status, body = get(f"{base}/health")
        assert status == 200, body
        assert json.loads(body)["database"] in {"unavailable", "no answer"}
        assert get(f"{base}/ready")[0] == 503
        time.sleep(3)
        own_postgres.start()
        started = time.monotonic()
        resumed["stop"] = wait_until(lambda: any(t > started for t in load.acked_at))
        resumed["find"] = wait_until(
            lambda: any(s > started and status == Status.SUCCESS for s, _, status in load.finds)
        )
        assert web.get("/")[0] == 200
        assert json.loads(get(f"{base}/health")[1])["database"] == "ok"
        time.sleep(1)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(60)
    assert broker.process.poll() is None, "\n".join(broker.output[-40:])
    # Outages are expected: one line each, no traceback (that would be a bug's).
    tracebacks = [line for line in broker.output if "Traceback" in line]
    assert not tracebacks, "\n".join(broker.output)

    # Every message without an AA, sent again, gets one (the same MSH-10: a resend).
    not_acked = [c for c, code in load.answers.items() if code != "AA"]
    # What could not be stored was answered AE (transient), not only cut off.
    assert "AE" in {load.answers[c] for c in not_acked}, not_acked
    ris = Ris(broker.hl7_port)
    try:
        for control in not_acked:
            assert ris.send(load.payloads[control]) == "AA", control
    finally:
        ris.close()
    code = broker.stop()
    assert code == 0, "\n".join(broker.output[-40:])

    engine = create_engine(make_url(own_postgres.url).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as connection:
            stored = dict(
                connection.execute(
                    select(Hl7Message.message_control_id, func.max(Hl7Message.outcome))
                    .where(Hl7Message.outcome == "AA")
                    .group_by(Hl7Message.message_control_id)
                ).all()
            )
            accessions = set(connection.scalars(select(RequestedProcedure.accession_number)))
    finally:
        engine.dispose()
    lost = [c for c in load.answers if c not in stored]
    assert not lost, lost
    missing = [c for c in load.answers if f"ACC{c[3:]}" not in accessions]
    assert not missing, missing

    with load.lock:
        finds = list(load.finds)
    statuses = {status for _, _, status in finds}
    # During the outage: a failure status, or no association at all while the
    # database stops (never a hang, never anything else).
    assert statuses <= {Status.SUCCESS, UNABLE_TO_PROCESS, "not associated"}, statuses
    assert max(took for _, took, _ in finds) < TIMEOUT_S, finds
    assert UNABLE_TO_PROCESS in statuses
    print(
        f"\nmessages {len(load.answers)}, not AA at first {len(not_acked)}; "
        f"C-FIND {len(finds)}: {sorted(map(str, statuses))}; "
        f"resumed after restart {resumed['restart']:.2f} s, after start "
        f"{resumed['stop']:.2f} s (HL7) / {resumed['find']:.2f} s (C-FIND); "
        f"stopped for {started - stopped:.1f} s"
    )
