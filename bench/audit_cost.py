"""The cost of ATNA auditing: HL7 msg/s and C-FIND p95 with audit off and on, in one run.

Starts rsyslogd (Debian's, TLS input with client certificates, as tests/audit does)
as the audit repository, then per round ``mwl serve`` twice on a fresh database:
once without audit, once with ``MWL_AUDIT_SYSLOG_*`` set (mutual TLS). Each measures
HL7 throughput (hl7_ingest's senders, ACK after commit; each accepted order queues an
Order Record) and then C-FIND latency over one association (each C-FIND queues a
Query message). Rounds alternate off/on so drift hits both. Target: at most 5 %.

    python bench/audit_cost.py --backends sqlite --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
import hl7_ingest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.audit.rsyslog import Rsyslog  # noqa: E402
from tests.certificates import issue, make_ca  # noqa: E402


def _cfind_latencies(port: int, count: int) -> list[float]:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(benchlib.HOST, port, ae_title=benchlib.MWL_AE_TITLE)
    assert assoc.is_established
    identifier = Dataset()
    identifier.PatientID = ""
    identifier.PatientName = ""
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledProcedureStepStartDate = "20261121"
    # One of hl7_ingest's 48 start times: a few dozen matches, like a modality's day.
    sps.ScheduledProcedureStepStartTime = "070000-070100"
    identifier.ScheduledProcedureStepSequence = [sps]
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            for status, _found in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
                if not status or status.Status not in (0xFF00, 0xFF01):
                    break
            times.append(time.perf_counter() - started)
    finally:
        assoc.release()
    return times


def _one(url: str, workdir: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    benchlib.recreate_database(url)
    mwl = benchlib.start_mwl(url, workdir, extra_env=env)
    try:
        factory = hl7_ingest.MessageFactory()
        run = hl7_ingest.run_throughput(
            mwl.hl7_port, factory, args.connections, args.seconds, args.messages
        )
        latencies = _cfind_latencies(mwl.dicom_port, args.queries)
    finally:
        benchlib.cleanup("stopping mwl serve", mwl.stop)
    return {
        "msgs_per_s": run.accepted / run.seconds if run.seconds else 0.0,
        "hl7_p50_ms": 1000 * statistics.median(run.latencies),
        "cfind_p95_ms": 1000 * benchlib.percentile(latencies, 95),
        "cfind_p50_ms": 1000 * statistics.median(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"]
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=150)
    args = parser.parse_args(argv)
    benchlib.exit_on_signals("audit_cost.py")
    benchlib.print_header("ATNA audit cost (issue 17)")
    with tempfile.TemporaryDirectory(prefix="mwl-bench-audit-") as tmp:
        work = Path(tmp)
        pki = work / "pki"
        ca = make_ca(pki, "ca")
        repository = Rsyslog(work / "rsyslog", issue(ca, pki, "repository", server=True), ca)
        repository.folder.mkdir()
        client = issue(ca, pki, "broker", server=False)
        audit_env = {
            "MWL_AUDIT_SYSLOG_HOST": benchlib.HOST,
            "MWL_AUDIT_SYSLOG_PORT": str(repository.tcp_port),
            "MWL_AUDIT_SYSLOG_TRANSPORT": "tls",
            "MWL_AUDIT_SYSLOG_CA": str(ca.cert),
            "MWL_AUDIT_SYSLOG_CERT": str(client.cert),
            "MWL_AUDIT_SYSLOG_KEY": str(client.key),
        }
        repository.start()
        try:
            for backend in args.backends:
                url = (
                    f"sqlite:///{work}/audit-bench.db"
                    if backend == "sqlite"
                    else benchlib.run_pg_url("mwl_bench_audit")
                )
                results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
                for n in range(args.rounds):
                    for mode in ("off", "on"):
                        env = audit_env if mode == "on" else {}
                        r = _one(url, work / f"{backend}-{mode}-{n}", env, args)
                        results[mode].append(r)
                        print(f"- {backend} round {n + 1} audit {mode}: {r}", flush=True)
                benchlib.cleanup("dropping the database", benchlib.drop_database, url)
                rows = []
                for key in ("msgs_per_s", "hl7_p50_ms", "cfind_p50_ms", "cfind_p95_ms"):
                    off = statistics.median(r[key] for r in results["off"])
                    on = statistics.median(r[key] for r in results["on"])
                    rows.append(
                        (key, f"{off:.2f}", f"{on:.2f}", f"{100 * (on - off) / off:+.1f} %")
                    )
                print(f"\n### {backend} (median of {args.rounds} rounds)\n")
                print(benchlib.markdown_table(("metric", "audit off", "audit on", "change"), rows))
            received = len(repository.messages())
            print(f"\nmessages the repository received: {received}")
        finally:
            repository.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
