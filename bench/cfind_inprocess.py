"""Time worklist C-FINDs against WorklistScp on the peers' generated worklist (not a test).

Loads the items of ``shared/peers/gen_worklist.py`` (same seed, so the same items
wlmscpfs and Orthanc serve) through ``apply_order``, starts the SCP in-process on
an ephemeral loopback port, and times the peers' "typical query" (Modality,
Scheduled Station AE Title, SPS Start Date, plus return keys):

* ``in-process``: a pynetdicom SCU in this process (association + C-FIND + release);
* ``findscu``: whole DCMTK ``findscu -W`` processes with ``TCP_NODELAY=1``, as the
  peers' benchmark measures them.

Usage::

    python bench/cfind_inprocess.py --n 1000 10000 --queries 20 \
        [--database-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]
from sqlalchemy import text

from mwl.config import Settings
from mwl.dicom.scp import WorklistScp
from mwl.domain import Code, Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.orders.apply import apply_order
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.migrate import upgrade

# shared/ lies beside the repository (as in CI and on the development machines).
PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"
SPS = "ScheduledProcedureStepSequence[0]"


def typical_keys(modality: str, station: str, date: str) -> list[str]:
    """The peers' typical query (run_peer_bench.typical_query), as findscu -k keys."""
    return [
        f"{SPS}.Modality={modality}",
        f"{SPS}.ScheduledStationAETitle={station}",
        f"{SPS}.ScheduledProcedureStepStartDate={date}",
        f"{SPS}.ScheduledProcedureStepStartTime",
        f"{SPS}.ScheduledProcedureStepDescription",
        f"{SPS}.ScheduledProcedureStepID",
        f"{SPS}.ScheduledPerformingPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyInstanceUID",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
    ]


def identifier(modality: str, station: str, date: str) -> Dataset:
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyInstanceUID",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
    ):
        setattr(ds, keyword, "")
    sps = Dataset()
    sps.Modality = modality
    sps.ScheduledStationAETitle = station
    sps.ScheduledProcedureStepStartDate = date
    for keyword in (
        "ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
        "ScheduledPerformingPhysicianName",
    ):
        setattr(sps, keyword, "")
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def order_from_wl(path: Path) -> Order:
    ds = dcmread(path)
    sps = ds.ScheduledProcedureStepSequence[0]
    stamp = sps.ScheduledProcedureStepStartDate + sps.ScheduledProcedureStepStartTime[:6]
    start = dt.datetime.strptime(stamp, "%Y%m%d%H%M%S")
    codes = tuple(
        Code(c.CodeValue, c.CodingSchemeDesignator, c.get("CodeMeaning", ""))
        for c in sps.get("ScheduledProtocolCodeSequence", [])
    )
    step = ScheduledStep(
        sps.ScheduledProcedureStepID,
        modality=sps.Modality,
        scheduled_station_ae_title=sps.ScheduledStationAETitle,
        start=start,
        scheduled_performing_physician_name=str(sps.get("ScheduledPerformingPhysicianName", "")),
        scheduled_procedure_step_description=sps.get("ScheduledProcedureStepDescription", ""),
        scheduled_protocol_codes=codes,
    )
    return Order(
        "NW",
        "SC",
        PatientDemographics(
            ds.PatientID,
            "",
            str(ds.PatientName),
            ds.get("PatientBirthDate", ""),
            ds.get("PatientSex", ""),
        ),
        (
            RequestedProcedure(
                ds.StudyInstanceUID,
                ds.RequestedProcedureID,
                accession_number=ds.get("AccessionNumber", ""),
                requested_procedure_description=ds.get("RequestedProcedureDescription", ""),
                steps=(step,),
            ),
        ),
    )


def load(url: str, n: int, workdir: Path) -> None:
    out = workdir / f"wl{n}"
    subprocess.run(
        [sys.executable, str(PEERS / "gen_worklist.py"), "--n", str(n), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    engine = make_engine(url)
    upgrade(engine)
    factory = make_session_factory(engine, writer=True)
    with factory.begin() as session:
        for path in sorted(out.rglob("*.wl")):
            apply_order(session, order_from_wl(path))
    engine.dispose()


def bench(url: str, n: int, queries: int, modality: str, station: str, date: str) -> dict:
    engine = make_engine(url)
    settings = Settings(
        database_url=url, bind_address="127.0.0.1", dicom_port=0, dicom_ae_title="MWLBENCH"
    )
    scp = WorklistScp(settings, make_session_factory(engine))
    scp.start()
    try:
        host, port = scp.address
        ae = AE(ae_title="BENCHSCU")
        ae.add_requested_context(ModalityWorklistInformationFind)
        query = identifier(modality, station, date)
        inproc, matches = [], 0
        for i in range(queries + 2):
            started = time.perf_counter()
            assoc = ae.associate(host, port, ae_title="MWLBENCH")
            matches = sum(
                1
                for status, _ in assoc.send_c_find(query, ModalityWorklistInformationFind)
                if status and status.Status in (0xFF00, 0xFF01)
            )
            assoc.release()
            if i >= 2:  # two warm-up queries
                inproc.append((time.perf_counter() - started) * 1000)
        env = {**os.environ, "TCP_NODELAY": "1"}
        cmd = ["findscu", "-W", "-aet", "BENCHSCU", "-aec", "MWLBENCH", "-to", "10"]
        for key in typical_keys(modality, station, date):
            cmd += ["-k", key]
        cmd += [host, str(port)]
        whole = []
        for _ in range(queries):
            started = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=60)
            whole.append((time.perf_counter() - started) * 1000)
    finally:
        scp.shutdown()
        engine.dispose()
    return {
        "n": n,
        "matches": matches,
        "inproc_median_ms": round(statistics.median(inproc), 1),
        "findscu_median_ms": round(statistics.median(whole), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--database-url", default="")
    p.add_argument("--modality", default="CT")
    p.add_argument("--station", default="CT01")
    p.add_argument("--date", default="20261121")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for n in a.n:
            if a.database_url:
                url = a.database_url
                engine = make_engine(url)
                with engine.begin() as conn:  # a fresh schema per size (our own names)
                    conn.execute(text("DROP SCHEMA IF EXISTS mwl_bench CASCADE"))
                    conn.execute(text("CREATE SCHEMA mwl_bench"))
                engine.dispose()
                sep = "&" if "?" in url else "?"
                url = f"{url}{sep}options=-csearch_path%3Dmwl_bench"
            else:
                url = f"sqlite:///{workdir / f'bench{n}.db'}"
            started = time.perf_counter()
            load(url, n, workdir)
            loaded = time.perf_counter() - started
            result = bench(url, n, a.queries, a.modality, a.station, a.date)
            result["load_s"] = round(loaded, 1)
            result["backend"] = "postgresql" if a.database_url else "sqlite"
            print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
