"""Concurrency of `mwl serve`: 50 modalities querying in a loop while HL7 flows at 20 msg/s.

Loads ``--n`` generated items (``load_items``) into a fresh database, starts
``mwl serve`` on loopback (ephemeral ports), then at the same time:

- ``--modalities`` pynetdicom SCUs (default 50: threads spread over
  ``--processes`` client processes, so the client's own GIL does not become the
  bottleneck), each doing ``--loops`` times: associate (its own association per
  query, calling AE ``MOD<nn>``, TCP_NODELAY), one worklist C-FIND for its station
  today (Modality + Scheduled Station AE Title + SPS Start Date), release; back to
  back (the default: a saturation test, the clients share the machine's cores with
  the server) or, with ``--interval-s``, one query per modality every that many
  seconds, the starts spread evenly (a department's steady load);
- one MLLP sender at ``--rate`` msg/s (default 20) of unique ORM^O01 messages
  (``hl7_ingest.MessageFactory``) until the SCUs are done.

Prints: associations attempted / established / refused (A-ASSOCIATE-RJ, with
result, source and reason) / aborted / not connected; failed queries (an
established association whose C-FIND did not end in Success, or timed out);
latency of each whole query (associate + C-FIND + release) p50/p95/p99/max;
HL7 ACK p50/p99 and non-AA answers during the load; the peak RSS (VmHWM) of
``mwl serve``. Every loop is bounded by ``--loops`` and ``--budget-s``.

Example::

    python bench/concurrency.py --n 10000 --modalities 50 --loops 20
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import hl7_ingest
import load_items

STATIONS = [
    ("CT", "CT01"),
    ("CT", "CT02"),
    ("CT", "CT03"),
    ("MR", "MR01"),
    ("MR", "MR02"),
    ("US", "US01"),
    ("US", "US02"),
    ("US", "US03"),
    ("CR", "CR01"),
    ("CR", "CR02"),
]
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/mwl_bench_concurrency"


@dataclass
class ScuResult:
    """What the modalities of one client process saw."""

    attempted: int = 0
    established: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # "result/source/reason" -> count
    aborted: int = 0
    not_connected: int = 0
    failed_queries: Counter[str] = field(default_factory=Counter)  # status or "timeout"
    latencies: list[float] = field(default_factory=list)
    matches: Counter[int] = field(default_factory=Counter)

    def merge(self, other: ScuResult) -> None:
        self.attempted += other.attempted
        self.established += other.established
        self.refused.update(other.refused)
        self.aborted += other.aborted
        self.not_connected += other.not_connected
        self.failed_queries.update(other.failed_queries)
        self.latencies.extend(other.latencies)
        self.matches.update(other.matches)


def _rejection(result: int | None, source: int | None, reason: int | None) -> str:
    """A-ASSOCIATE-RJ fields in words (PS3.8 9.3.4, Table 9-21)."""
    results: dict[int | None, str] = {1: "rejected-permanent", 2: "rejected-transient"}
    # Reason meanings depend on the source: 1 user, 2 ACSE provider, 3 presentation provider.
    reasons: dict[tuple[int | None, int | None], str] = {
        (1, 1): "no-reason-given",
        (1, 2): "application-context-name-not-supported",
        (1, 3): "calling-AE-title-not-recognized",
        (1, 7): "called-AE-title-not-recognized",
        (2, 1): "no-reason-given",
        (2, 2): "protocol-version-not-supported",
        (3, 1): "temporary-congestion",
        (3, 2): "local-limit-exceeded",
    }
    return (
        f"{results.get(result, str(result))}, source {source}, "
        f"{reasons.get((source, reason), str(reason))}"
    )


def _set_nodelay(event: Any) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _modality(
    index: int,
    port: int,
    called_ae: str,
    date: str,
    loops: int,
    deadline: float,
    result: ScuResult,
    lock: threading.Lock,
    interval_s: float = 0.0,
    offset_s: float = 0.0,
) -> None:
    """One modality: ``loops`` x (associate, C-FIND for its station today, release).

    With ``interval_s`` a query starts every ``interval_s`` seconds (from ``offset_s``;
    at once when the previous one took longer), else each right after the last.
    """
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    modality, station = STATIONS[index % len(STATIONS)]
    ae = AE(ae_title=f"MOD{index:02d}")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    query = Dataset()
    query.PatientName = ""
    query.PatientID = ""
    query.AccessionNumber = ""
    query.StudyInstanceUID = ""
    sps = Dataset()
    sps.Modality = modality
    sps.ScheduledStationAETitle = station
    sps.ScheduledProcedureStepStartDate = date
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepDescription = ""
    query.ScheduledProcedureStepSequence = [sps]
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, _set_nodelay)]
    first_start = time.monotonic() + offset_s
    for loop in range(loops):
        if interval_s:
            time.sleep(max(0.0, first_start + loop * interval_s - time.monotonic()))
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        assoc = ae.associate(benchlib.HOST, port, ae_title=called_ae, evt_handlers=handlers)
        if not assoc.is_established:
            with lock:
                result.attempted += 1
                if assoc.is_rejected and assoc.acceptor.primitive is not None:
                    p = assoc.acceptor.primitive
                    result.refused[_rejection(p.result, p.result_source, p.diagnostic)] += 1
                elif assoc.is_rejected:
                    result.refused["rejected"] += 1
                elif assoc.is_aborted:
                    result.aborted += 1
                else:
                    result.not_connected += 1
            time.sleep(0.05)  # as a modality would wait before trying again
            continue
        matches, failure = 0, ""
        try:
            for status, _identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
                if not status:
                    failure = "timeout or abort"
                    break
                code = int(status.Status)
                if code in (0xFF00, 0xFF01):
                    matches += 1
                elif code != 0x0000:
                    failure = f"0x{code:04X}"
        finally:
            if assoc.is_established:
                assoc.release()
        seconds = time.perf_counter() - started
        with lock:
            result.attempted += 1
            result.established += 1
            if failure:
                result.failed_queries[failure] += 1
            else:
                result.latencies.append(seconds)
                result.matches[matches] += 1


def run_client_process(
    first: int,
    count: int,
    port: int,
    called_ae: str,
    date: str,
    loops: int,
    budget_s: float,
    interval_s: float = 0.0,
    modalities: int = 1,
) -> ScuResult:
    """``count`` modality threads in this (client) process; returns what they saw."""
    from pynetdicom import _config

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    # The load generator shares the CPU with the server: no event logging work.
    _config.LOG_HANDLER_LEVEL = "none"
    result = ScuResult()
    lock = threading.Lock()
    deadline = time.monotonic() + budget_s
    threads = [
        threading.Thread(
            target=_modality,
            name=f"mod-{i}",
            args=(i, port, called_ae, date, loops, deadline, result, lock),
            # Starts spread evenly over one interval.
            kwargs={"interval_s": interval_s, "offset_s": interval_s * i / max(1, modalities)},
        )
        for i in range(first, first + count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=budget_s + 120)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="stored worklist items")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
        help="PostgreSQL database for the run; DROPPED and re-created",
    )
    parser.add_argument("--modalities", type=int, default=50)
    parser.add_argument("--processes", type=int, default=5, help="client processes")
    parser.add_argument("--loops", type=int, default=20, help="queries per modality")
    parser.add_argument("--rate", type=float, default=20.0, help="HL7 messages per second")
    parser.add_argument(
        "--interval-s",
        type=float,
        default=0.0,
        help="each modality starts a query every this many seconds (0: back to back)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="modalities start no query after this many seconds",
    )
    parser.add_argument("--date", default=load_items.DEFAULT_BASE_DATE)
    parser.add_argument("--peers-dir", type=Path, help="default: ../shared/peers")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mwl-concurrency-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{workdir}/mwl-conc.db" if args.backend == "sqlite" else args.pg_url
    benchlib.print_header("Concurrency: modalities querying while HL7 flows")
    status = 0
    try:
        loaded, _ = load_items.load(url, args.n, recreate=True, peers_dir=args.peers_dir)
        print(f"loaded {loaded.steps} steps into {args.backend} in {loaded.seconds:.1f} s")
        mwl = benchlib.start_mwl(url, workdir / "mwl", life_s=int(args.budget_s + 900))
        try:
            print(f"server: `{mwl.shown_command()}`")
            rss_idle = mwl.vm_rss_mb()
            stop = threading.Event()
            hl7_result: list[hl7_ingest.RunResult] = []
            hl7_thread = threading.Thread(
                target=lambda: hl7_result.append(
                    hl7_ingest.run_steady(
                        mwl.hl7_port,
                        hl7_ingest.MessageFactory(),
                        args.rate,
                        args.budget_s + 60,
                        stop,
                    )
                ),
                name="hl7-sender",
            )
            hl7_thread.start()
            per = [
                args.modalities // args.processes
                + (1 if i < args.modalities % args.processes else 0)
                for i in range(args.processes)
            ]
            firsts = [sum(per[:i]) for i in range(args.processes)]
            total = ScuResult()
            started = time.perf_counter()
            with concurrent.futures.ProcessPoolExecutor(max_workers=args.processes) as pool:
                futures = [
                    pool.submit(
                        run_client_process,
                        first,
                        count,
                        mwl.dicom_port,
                        mwl.ae_title,
                        args.date,
                        args.loops,
                        args.budget_s,
                        args.interval_s,
                        args.modalities,
                    )
                    for first, count in zip(firsts, per, strict=True)
                    if count
                ]
                for future in futures:
                    total.merge(future.result(timeout=args.budget_s + 300))
            elapsed = time.perf_counter() - started
            stop.set()
            hl7_thread.join(timeout=120)
            rss_peak = mwl.vm_hwm_mb()
        finally:
            mwl.stop()
        summary = benchlib.summary_ms(total.latencies)
        refused = sum(total.refused.values())
        failed = sum(total.failed_queries.values())
        pace = f"one query every {args.interval_s:g} s each" if args.interval_s else "back to back"
        print(
            f"\n{args.modalities} modalities x {args.loops} queries ({pace}) over "
            f"{args.processes} client processes, {args.n} stored steps, {args.backend}: "
            f"{elapsed:.1f} s, {len(total.latencies) / elapsed:.1f} successful queries/s"
        )
        rows = [
            ("associations attempted", total.attempted),
            ("associations established", total.established),
            ("associations refused (A-ASSOCIATE-RJ)", f"{refused} {dict(total.refused) or ''}"),
            ("associations aborted", total.aborted),
            ("connections failed", total.not_connected),
            (
                "failed queries (established, not Success)",
                f"{failed} {dict(total.failed_queries) or ''}",
            ),
            ("successful queries", len(total.latencies)),
            ("matches per query (count: queries)", dict(sorted(total.matches.items()))),
            (
                "query latency p50 / p95 / p99 / max ms (associate + C-FIND + release)",
                f"{summary.get('median_ms')} / {summary.get('p95_ms')} / {summary.get('p99_ms')} / "
                f"{summary.get('max_ms')}",
            ),
        ]
        if hl7_result:
            rows.append(("HL7 during the load", hl7_result[0].line()))
        rows.append(("mwl serve RSS idle / peak (VmHWM) MB", f"{rss_idle} / {rss_peak}"))
        print(benchlib.markdown_table(["what", "value"], rows))
        if refused or failed or total.aborted or total.not_connected:
            status = 1
    finally:
        if not args.keep:
            benchlib.drop_database(url)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
