"""`mwl serve` as its own process: an HL7 order in, MPPS from a modality, status back to the RIS."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from mwl.hl7.client import send_messages
from tests.e2e.conftest import broker_env

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

READY_TIMEOUT_S = 60
ORDER = Path(__file__).resolve().parents[2] / "samples" / "hl7" / "orm_o01_nw.hl7"
STUDY = "1.2.826.0.1.3680043.10.543.20261121.1"  # what the sample order says


def _serve(
    env: dict[str, str], cwd: Path
) -> tuple[subprocess.Popen[str], dict[str, int], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mwl.cli", "serve"],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    output: list[str] = []
    ports: dict[str, int] = {}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        output.append(line)
        if m := re.match(r"HL7 MLLP listening on [\d.]+:(\d+)", line):
            ports["hl7"] = int(m[1])
        elif m := re.match(r"DICOM worklist SCP \S+ listening on [\d.]+:(\d+)", line):
            ports["dicom"] = int(m[1])
        elif line == "mwl is ready":
            break
    if "mwl is ready" not in output:
        process.kill()
        process.wait(timeout=10)
        pytest.fail("mwl serve did not become ready:\n" + "\n".join(output))
    return process, ports, output


def test_serve_reports_mpps_to_the_ris(database_url, tmp_path, ris):
    env = broker_env(
        database_url,
        MWL_RIS_HOST="127.0.0.1",
        MWL_RIS_PORT=str(ris.port),
        MWL_RIS_POLL_INTERVAL_SECONDS="0.05",
        MWL_RIS_RETRY_INITIAL_SECONDS="0.05",
        MWL_RIS_RETRY_MAX_SECONDS="0.2",
    )
    process, ports, output = _serve(env, tmp_path)
    try:
        assert f"RIS status messages to 127.0.0.1:{ris.port}" in output
        order = ORDER.read_bytes().replace(b"\n", b"\r")
        (ack,) = send_messages("127.0.0.1", ports["hl7"], [order])
        assert b"MSA|AA" in ack
        address = ("127.0.0.1", ports["dicom"])
        (sps_id,) = find_sps_ids(address, "")
        uid = generate_uid()

        assert n_create(address, n_create_dataset(reference(STUDY, sps_id)), uid).code == 0
        assert find_sps_ids(address, "") == []
        assert n_set(address, n_set_dataset("COMPLETED"), uid).code == 0

        wait_until(lambda: len(ris.accepted) == 2, what="two status messages")
        assert [hl7_field(p, "ORC", 5) for _, p in ris.accepted] == ["IP", "CM"]
        assert hl7_field(ris.accepted[0][1], "OBR", 20) == sps_id
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()
    assert code == 0
