"""Concurrency of `mwl serve`: 50 modalities querying in a loop while HL7 flows at 20 msg/s.

Loads ``--n`` generated items (``load_items``) into a fresh database (SQLite in
the work folder, or PostgreSQL ``mwl_bench_concurrency_<pid>_<hex>``, dropped at the
end unless ``--keep``), starts ``mwl serve`` on loopback (ephemeral ports), then at
the same time:

- ``--modalities`` modalities (default 50), each doing ``--loops`` times one
  worklist query for its station today (Modality + Scheduled Station AE Title +
  SPS Start Date, calling AE ``MOD<nn>``), with its own association per query;
  back to back (the default: a saturation test, the clients share the machine's
  cores with the server) or, with ``--interval-s``, one query per modality every
  that many seconds, the starts spread evenly (a department's steady load).
  ``--client`` says what a modality is:

  - ``pynetdicom`` (default): an SCU thread, the threads spread over
    ``--processes`` client processes (so the client's own GIL does not become
    the bottleneck); a query is associate + C-FIND + release, TCP_NODELAY;
  - ``findscu``: a thread that runs whole DCMTK ``findscu -W`` processes
    (``--findscu``, default /usr/bin's; ``TCP_NODELAY=1``), each bounded by
    ``--query-timeout-s``; a query is the whole process (start, associate,
    C-FIND, release, exit), as modalities built on DCMTK do it and as
    ``query_latency.py`` measures. Refusals, aborts and failures are read from
    findscu's log (its exit status is 2 for a refused or failed association and
    0 even when the final C-FIND status is not Success).

  pynetdicom stays the default: it is what earlier results were measured with,
  and on a small machine it leaves more CPU to the server (no process start per
  query), so the numbers say more about ``mwl serve`` than about the client;
- one MLLP sender at ``--rate`` msg/s (default 20) of unique ORM^O01 messages
  (``hl7_ingest.MessageFactory``) until the modalities are done.

Prints: the client and pace used, associations attempted / established / refused
(A-ASSOCIATE-RJ, with result, source and reason) / aborted / not connected (and,
for findscu, processes killed at their timeout before an association); failed
queries (an established association whose C-FIND did not end in Success, or timed
out); latency of each whole query p50/p95/p99/max; HL7 ACK p50/p99 and non-AA
answers during the load; the peak RSS (VmHWM) of ``mwl serve``. Every loop is
bounded by ``--loops`` and ``--budget-s``. SIGTERM/SIGINT end the run normally:
client threads, processes and findscu children, the HL7 sender and ``mwl serve``
are stopped, the database dropped.

Examples::

    python bench/concurrency.py --n 10000 --modalities 50 --loops 20
    python bench/concurrency.py --n 10000 --modalities 50 --loops 10 --client findscu \
        --interval-s 2
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
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
PG_NAME = "mwl_bench_concurrency"  # + _<pid>_<hex> per run unless --pg-url
CLIENTS = ("pynetdicom", "findscu")
SPS = "(0040,0100)[0]."


@dataclass
class ScuResult:
    """What the modalities of one client process saw."""

    attempted: int = 0
    established: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # "result/source/reason" -> count
    aborted: int = 0
    not_connected: int = 0
    timeouts: int = 0  # findscu killed at its timeout before an association was accepted
    failed_queries: Counter[str] = field(default_factory=Counter)  # status or "timeout"
    latencies: list[float] = field(default_factory=list)
    matches: Counter[int] = field(default_factory=Counter)

    def merge(self, other: ScuResult) -> None:
        self.attempted += other.attempted
        self.established += other.established
        self.refused.update(other.refused)
        self.aborted += other.aborted
        self.not_connected += other.not_connected
        self.timeouts += other.timeouts
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


def _station(index: int) -> tuple[str, str]:
    return STATIONS[index % len(STATIONS)]


def _calling_ae(index: int) -> str:
    return f"MOD{index:02d}"


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

    modality, station = _station(index)
    ae = AE(ae_title=_calling_ae(index))
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


# --------------------------------------------------------------------------- findscu client


def findscu_keys(modality: str, station: str, date: str) -> list[str]:
    """The pynetdicom client's query as findscu ``-k`` keys (same matching and return keys)."""
    return [
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyInstanceUID",
        f"{SPS}Modality={modality}",
        f"{SPS}ScheduledStationAETitle={station}",
        f"{SPS}ScheduledProcedureStepStartDate={date}",
        f"{SPS}ScheduledProcedureStepStartTime",
        f"{SPS}ScheduledProcedureStepID",
        f"{SPS}ScheduledProcedureStepDescription",
    ]


def findscu_command(
    findscu: str, index: int, port: int | str, called_ae: str, date: str, timeout_s: float
) -> list[str]:
    """Modality ``index``'s findscu: ``-v -sr`` logs the association and one line per response.

    ``-to`` bounds the TCP connect, ``-ta``/``-td`` the association and each DIMSE
    wait, so a process ends by itself even if this script is killed.
    """
    modality, station = _station(index)
    wait = str(max(1, int(timeout_s)))
    cmd = [findscu, "-v", "-W", "-sr", "-aet", _calling_ae(index), "-aec", called_ae]
    cmd += ["-to", "10", "-ta", wait, "-td", wait]
    for key in findscu_keys(modality, station, date):
        cmd += ["-k", key]
    return cmd + [benchlib.HOST, str(port)]


_RJ_RE = re.compile(
    r"Association Rejected:.*?Result: ([^,\n]+), Source: ([^\n]+?)\s*\n.*?Reason: ([^\n]+)",
    re.DOTALL,
)
# DCMTK 3.6.7: "Service User", "Service Provider (ACSE Related)", "... (Presentation Related)".
_RJ_SOURCES = {"Service User": 1, "ACSE Related": 2, "Presentation Related": 3}


def _dcmtk_words(text: str) -> str:
    """DCMTK's ``Called AE Title Not Recognized`` as pynetdicom's words in ``_rejection``."""
    return "-".join(text.strip().lower().split()).replace("-ae-", "-AE-")


def classify_findscu(code: int | None, out: str) -> tuple[str, str, int]:
    """What one findscu process did, from its exit status and its ``-v -sr`` log.

    Returns (outcome, detail, matches); outcome is ``ok``, ``refused`` (detail:
    A-ASSOCIATE-RJ result, source, reason), ``aborted``, ``not_connected``,
    ``timeout`` (killed before an association), or ``failed`` (an association whose
    C-FIND did not end in Success; detail: the final status, ``timeout``, ``abort``
    or the exit status).

    DCMTK 3.6.7 prints for a refusal (exit status 2)::

        E: Association Rejected:
        E: Result: Rejected Permanent, Source: Service User
        E: Reason: Called AE Title Not Recognized

    ``Association Request Failed: ... Connection refused`` when nothing listens
    (exit 2), and exits 0 when the final C-FIND status is a failure
    (``Received Final Find Response (Refused: OutOfResources)``).
    """
    established = "Association Accepted" in out
    if not established:
        rejected = _RJ_RE.search(out)
        if rejected:
            result, source, reason = rejected.groups()
            number = next((n for k, n in _RJ_SOURCES.items() if k in source), None)
            return (
                "refused",
                f"{_dcmtk_words(result)}, source {number or source.strip()}, "
                f"{_dcmtk_words(reason)}",
                0,
            )
        if "Association Rejected" in out:
            return "refused", "rejected", 0
        if code is None:
            return "timeout", "", 0
        if "aborted" in out.lower():
            return "aborted", "", 0
        return "not_connected", out.strip().splitlines()[-1][:120] if out.strip() else "", 0
    matches = len(benchlib.FINDSCU_PENDING_RE.findall(out))
    final = benchlib.FINDSCU_FINAL_RE.search(out)
    if code == 0 and benchlib.FINDSCU_FINAL_OK in out:
        return "ok", "", matches
    if code is None:
        return "failed", "timeout", matches
    if final:
        return "failed", final.group(1), matches
    if "abort" in out.lower():
        return "failed", "abort", matches
    return "failed", f"exit {code}", matches


def _findscu_modality(
    index: int,
    cmd: Sequence[str],
    env: dict[str, str],
    loops: int,
    deadline: float,
    timeout_s: float,
    result: ScuResult,
    lock: threading.Lock,
    stop: threading.Event,
    children: benchlib.ChildProcesses,
    interval_s: float = 0.0,
    offset_s: float = 0.0,
) -> None:
    """One modality: ``loops`` x one whole findscu process (same pacing as ``_modality``)."""
    first_start = time.monotonic() + offset_s
    for loop in range(loops):
        if interval_s:
            stop.wait(max(0.0, first_start + loop * interval_s - time.monotonic()))
        if stop.is_set() or time.monotonic() > deadline:
            break
        started = time.perf_counter()
        done = children.run(cmd, timeout_s, env)
        seconds = time.perf_counter() - started
        if done is None or stop.is_set():
            break  # stopping: this process was killed, not answered
        outcome, detail, matches = classify_findscu(*done)
        with lock:
            result.attempted += 1
            if outcome in ("ok", "failed"):
                result.established += 1
            if outcome == "ok":
                result.latencies.append(seconds)
                result.matches[matches] += 1
            elif outcome == "failed":
                result.failed_queries[detail] += 1
            elif outcome == "refused":
                result.refused[detail] += 1
            elif outcome == "aborted":
                result.aborted += 1
            elif outcome == "timeout":
                result.timeouts += 1
            else:
                result.not_connected += 1
        if outcome != "ok" and outcome != "failed":
            stop.wait(0.05)  # as a modality would wait before trying again


def run_findscu_clients(
    args: argparse.Namespace, port: int, called_ae: str, deadline: float
) -> ScuResult:
    """``--modalities`` threads in this process, each running findscu processes.

    The threads only wait for their children, so one process holds them all. On
    any exception (SIGTERM included) the children are killed and the threads
    joined before it propagates.
    """
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    result = ScuResult()
    lock = threading.Lock()
    stop = threading.Event()
    children = benchlib.ChildProcesses()
    threads = [
        threading.Thread(
            target=_findscu_modality,
            name=f"findscu-{i}",
            args=(
                i,
                findscu_command(args.findscu, i, port, called_ae, args.date, args.query_timeout_s),
                env,
                args.loops,
                deadline,
                args.query_timeout_s,
                result,
                lock,
                stop,
                children,
            ),
            kwargs={
                "interval_s": args.interval_s,
                "offset_s": args.interval_s * i / max(1, args.modalities),
            },
            daemon=True,
        )
        for i in range(args.modalities)
    ]
    try:
        for t in threads:
            t.start()
        end = deadline + args.query_timeout_s + 60
        for t in threads:
            t.join(timeout=max(0.1, end - time.monotonic()))
    finally:
        stop.set()
        killed = children.kill_all()
        if killed:
            print(f"findscu client: killed {killed} running findscu", file=sys.stderr)
        for t in threads:
            t.join(timeout=10)
    return result


def server_side_find_ms(url: str) -> list[float]:
    """The broker's own time per C-FIND, as its query log recorded it."""
    from sqlalchemy import select

    from mwl.store.engine import make_engine
    from mwl.store.models import QueryLogEntry

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [ms / 1000.0 for ms in conn.execute(select(QueryLogEntry.duration_ms)).scalars()]
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- pynetdicom client


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


def run_pynetdicom_clients(
    args: argparse.Namespace, port: int, called_ae: str, budget_s: float
) -> ScuResult:
    """``--modalities`` SCU threads over ``--processes`` client processes.

    A ``multiprocessing`` pool whose workers die with this process; on any
    exception (SIGTERM included) ``terminate()`` kills them before it propagates.
    """
    per = [
        args.modalities // args.processes + (1 if i < args.modalities % args.processes else 0)
        for i in range(args.processes)
    ]
    firsts = [sum(per[:i]) for i in range(args.processes)]
    total = ScuResult()
    pool = multiprocessing.get_context("fork").Pool(
        args.processes, initializer=benchlib.die_with_parent_worker
    )
    try:
        pending = [
            pool.apply_async(
                run_client_process,
                (
                    first,
                    count,
                    port,
                    called_ae,
                    args.date,
                    args.loops,
                    budget_s,
                    args.interval_s,
                    args.modalities,
                ),
            )
            for first, count in zip(firsts, per, strict=True)
            if count
        ]
        for job in pending:
            total.merge(job.get(timeout=budget_s + 300))
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="stored worklist items")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--pg-url",
        help="PostgreSQL database for the run; DROPPED and re-created "
        f"(default: {benchlib.PG_SERVER_URL}/{PG_NAME}_<pid>_<hex>, new per run)",
    )
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="pynetdicom",
        help="what a modality is: pynetdicom SCU threads (default) or whole DCMTK "
        "findscu processes",
    )
    parser.add_argument("--modalities", type=int, default=50)
    parser.add_argument(
        "--processes", type=int, default=5, help="client processes (--client pynetdicom)"
    )
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
    parser.add_argument(
        "--query-timeout-s",
        type=float,
        default=60.0,
        help="--client findscu: a findscu process is killed after this many seconds",
    )
    parser.add_argument(
        "--findscu",
        help="--client findscu: DCMTK's findscu (default: the one in /usr/bin or "
        "/usr/local/bin; a Python script such as pynetdicom's findscu is refused)",
    )
    parser.add_argument("--date", default=load_items.DEFAULT_BASE_DATE)
    parser.add_argument("--peers-dir", type=Path, help="default: ../shared/peers")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and database")
    args = parser.parse_args(argv)
    if args.modalities < 1 or args.loops < 1 or args.processes < 1:
        parser.error("--modalities, --loops and --processes must be at least 1")
    benchlib.exit_on_signals("concurrency")
    if args.client == "findscu":
        try:
            args.findscu = benchlib.resolve_dcmtk("findscu", args.findscu)
        except benchlib.NotDcmtkError as exc:
            print(f"concurrency: {exc}", file=sys.stderr)
            return 2

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mwl-concurrency-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.backend == "sqlite":
        url = f"sqlite:///{workdir}/mwl-conc.db"
    else:
        url = benchlib.run_pg_url(PG_NAME, args.pg_url)
    benchlib.print_header("Concurrency: modalities querying while HL7 flows")
    pace = f"one query every {args.interval_s:g} s each" if args.interval_s else "back to back"
    if args.client == "findscu":
        client = (
            f"findscu (DCMTK {benchlib.dcmtk_version(args.findscu)} {args.findscu}): "
            f"one thread per modality running whole findscu processes, "
            f"each killed after {args.query_timeout_s:g} s"
        )
    else:
        client = f"pynetdicom SCU threads over {args.processes} client processes"
    print(f"client: {client}; pace: {pace}")
    print(f"database: {benchlib.shown_url(url)}; work folder: {workdir}")
    if args.client == "findscu":
        example = "TCP_NODELAY=1 " + shlex.join(
            findscu_command(args.findscu, 0, "<port>", "<AE>", args.date, args.query_timeout_s)
        )
        print(f"findscu of modality 0 (MOD<nn> and its station for the others): `{example}`")
    status = 0
    mwl: benchlib.MwlServer | None = None
    stop = threading.Event()
    hl7_thread: threading.Thread | None = None
    try:
        loaded, _ = load_items.load(url, args.n, recreate=True, peers_dir=args.peers_dir)
        print(f"loaded {loaded.steps} steps into {args.backend} in {loaded.seconds:.1f} s")
        mwl = benchlib.start_mwl(url, workdir / "mwl", life_s=int(args.budget_s + 900))
        print(f"server: `{mwl.shown_command()}`", flush=True)
        rss_idle = mwl.vm_rss_mb()
        hl7_result: list[hl7_ingest.RunResult] = []
        hl7_port = mwl.hl7_port
        hl7_thread = threading.Thread(
            target=lambda: hl7_result.append(
                hl7_ingest.run_steady(
                    hl7_port, hl7_ingest.MessageFactory(), args.rate, args.budget_s + 60, stop
                )
            ),
            name="hl7-sender",
            daemon=True,
        )
        hl7_thread.start()
        started = time.perf_counter()
        cpu_before = mwl.cpu_seconds()
        load_before = os.getloadavg()[0]
        if args.client == "findscu":
            total = run_findscu_clients(
                args, mwl.dicom_port, mwl.ae_title, time.monotonic() + args.budget_s
            )
        else:
            total = run_pynetdicom_clients(args, mwl.dicom_port, mwl.ae_title, args.budget_s)
        elapsed = time.perf_counter() - started
        server_cpu = (mwl.cpu_seconds() - cpu_before) / elapsed
        load_after = os.getloadavg()[0]
        stop.set()
        hl7_thread.join(timeout=120)
        rss_peak = mwl.vm_hwm_mb()
        server_side = server_side_find_ms(url)
    finally:
        stop.set()
        if hl7_thread is not None:
            hl7_thread.join(timeout=30)
        if mwl is not None:
            benchlib.cleanup("stopping mwl serve", mwl.stop)
        if not args.keep:
            benchlib.cleanup("dropping the database", benchlib.drop_database, url)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept: {benchlib.shown_url(url)}, {workdir}", file=sys.stderr)
    summary = benchlib.summary_ms(total.latencies)
    refused = sum(total.refused.values())
    failed = sum(total.failed_queries.values())
    what = (
        "whole findscu process: start, associate, C-FIND, release, exit"
        if args.client == "findscu"
        else "associate + C-FIND + release"
    )
    over = "" if args.client == "findscu" else f" over {args.processes} client processes"
    print(
        f"\n{args.modalities} modalities x {args.loops} queries ({pace}), client "
        f"{args.client}{over}, {args.n} stored steps, {args.backend}: "
        f"{elapsed:.1f} s, {len(total.latencies) / elapsed:.1f} successful queries/s"
    )
    rows: list[tuple[str, object]] = [
        ("client", client),
        ("pace", pace),
        ("associations attempted", total.attempted),
        ("associations established", total.established),
        ("associations refused (A-ASSOCIATE-RJ)", f"{refused} {dict(total.refused) or ''}"),
        ("associations aborted", total.aborted),
        ("connections failed", total.not_connected),
    ]
    if args.client == "findscu":
        rows.append(("findscu killed at its timeout before an association", total.timeouts))
    rows += [
        (
            "failed queries (established, not Success)",
            f"{failed} {dict(total.failed_queries) or ''}",
        ),
        ("successful queries", len(total.latencies)),
        ("matches per query (count: queries)", dict(sorted(total.matches.items()))),
        (
            f"query latency p50 / p95 / p99 / max ms ({what})",
            f"{summary.get('median_ms')} / {summary.get('p95_ms')} / {summary.get('p99_ms')} / "
            f"{summary.get('max_ms')}",
        ),
    ]
    server = benchlib.summary_ms(server_side)
    rows += [
        (
            "server-side C-FIND p50 / p95 / p99 / max ms (the query log)",
            f"{server.get('median_ms')} / {server.get('p95_ms')} / {server.get('p99_ms')} / "
            f"{server.get('max_ms')}",
        ),
        ("mwl serve CPU during the load (of one core)", f"{server_cpu:.0%}"),
        ("machine load (1 min) before / after", f"{load_before:.1f} / {load_after:.1f}"),
    ]
    if hl7_result:
        rows.append(("HL7 during the load", hl7_result[0].line()))
    rows.append(("mwl serve RSS idle / peak (VmHWM) MB", f"{rss_idle} / {rss_peak}"))
    print(benchlib.markdown_table(["what", "value"], rows))
    if refused or failed or total.aborted or total.not_connected or total.timeouts:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
