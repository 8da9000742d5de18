"""Cost of metrics: HL7 msg/s and C-FIND p95 with metrics on vs off, in one run.

Two ``mwl serve`` processes on two SQLite files of the same content, one with
``MWL_METRICS_ENABLED=true`` (and ``/metrics`` scraped every second, harder than a
15 s Prometheus) and one with ``false``. Rounds alternate the order (on/off, off/on,
...) so that a noisy neighbour on the shared machine hurts both alike. Each round
per broker: HL7 ORM^O01 throughput over ``--connections`` connections for
``--hl7-seconds``, then ``--queries`` worklist C-FINDs on one association, each for
one patient ID (one match). The report gives the median msg/s over the rounds and
the p95 over all C-FINDs, and the difference in percent (target: at most 5 %).

    python bench/metrics_overhead.py --rounds 4 --hl7-seconds 8 --queries 300
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import benchlib
from hl7_ingest import MessageFactory, run_throughput
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

MODES = ("on", "off")


def _web_port(server: benchlib.MwlServer) -> int:
    for line in server.stdout_lines:
        if line.startswith("web page on http://"):
            return int(line.rsplit(":", 1)[1].strip("/"))
    raise RuntimeError("mwl serve printed no web address")


def _scraper(port: int, stop: threading.Event, counts: list[int]) -> None:
    url = f"http://{benchlib.HOST}:{port}/metrics"
    while not stop.wait(1.0):
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
        counts[0] += 1


def _nodelay(event: Event) -> None:
    # Without it, Nagle and delayed ACKs add 40 ms to every small request.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _cfind_latencies(
    port: int, patient_ids: list[str], ae_title: str, unexpected: list[str]
) -> list[float]:
    ae = AE(ae_title="BENCH01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(
        benchlib.HOST, port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    if not assoc.is_established:
        raise RuntimeError("the worklist SCP rejected the association")
    latencies = []
    try:
        for patient_id in patient_ids:
            ds = Dataset()
            ds.PatientID = patient_id
            ds.PatientName = ""
            sps = Dataset()
            sps.ScheduledStationAETitle = ""
            sps.ScheduledProcedureStepStartDate = ""
            ds.ScheduledProcedureStepSequence = [sps]
            started = time.perf_counter()
            matches, final = 0, None
            for status, _identifier in assoc.send_c_find(ds, ModalityWorklistInformationFind):
                if status and status.Status in (0xFF00, 0xFF01):
                    matches += 1
                elif status:
                    final = int(status.Status)
            latencies.append(time.perf_counter() - started)
            if (matches, final) != (1, 0):
                # Counted, not fatal: the report says how many, per mode.
                unexpected.append(f"{patient_id}: {matches} match(es), final 0x{final or 0:04X}")
    finally:
        assoc.release()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--hl7-seconds", type=float, default=8.0)
    parser.add_argument("--hl7-messages", type=int, default=5000, help="cap per HL7 run")
    parser.add_argument("--queries", type=int, default=300, help="C-FINDs per round")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    benchlib.exit_on_signals("metrics_overhead")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mwl-metrics-bench-"))
    benchlib.print_header("Metrics overhead: metrics_enabled true vs false")
    tag = f"{int(time.time()) % 1_000_000:06d}"
    servers: dict[str, benchlib.MwlServer] = {}
    factories = {mode: MessageFactory(tag=tag) for mode in MODES}
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    scrapes = [0]
    odd: dict[str, list[str]] = {mode: [] for mode in MODES}
    try:
        for mode in MODES:
            servers[mode] = benchlib.start_mwl(
                f"sqlite:///{workdir}/mwl-{mode}.db",
                workdir / mode,
                extra_env={
                    "MWL_METRICS_ENABLED": "true" if mode == "on" else "false",
                    "MWL_RETENTION_INTERVAL_SECONDS": "0",
                },
            )
            print(f"metrics {mode}: {servers[mode].shown_command()}")
        for round_number in range(args.rounds):
            order = MODES if round_number % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                server = servers[mode]
                stop = threading.Event()
                scraper = None
                if mode == "on":
                    scraper = threading.Thread(
                        target=_scraper, args=(_web_port(server), stop, scrapes), daemon=True
                    )
                    scraper.start()
                try:
                    result = run_throughput(
                        server.hl7_port,
                        factories[mode],
                        args.connections,
                        args.hl7_seconds,
                        args.hl7_messages,
                    )
                    if result.errors or set(result.codes) - {"AA"}:
                        raise RuntimeError(f"HL7 run failed: {result.line()}")
                    rates[mode].append(result.accepted / result.seconds)
                    # Patients of this round's messages (each has one step).
                    done = result.accepted
                    ids = [f"P{tag}{(i * 7919) % done:08d}" for i in range(args.queries)]
                    latencies[mode].extend(
                        _cfind_latencies(server.dicom_port, ids, server.ae_title, odd[mode])
                    )
                finally:
                    stop.set()
                    if scraper is not None:
                        scraper.join(timeout=15)
                p95 = benchlib.percentile(latencies[mode][-args.queries :], 95) * 1000
                print(
                    f"round {round_number + 1} metrics {mode}: {rates[mode][-1]:.1f} msg/s,"
                    f" C-FIND p95 {p95:.2f} ms",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    summary = {}
    for mode in MODES:
        rate = statistics.median(rates[mode])
        p95 = benchlib.percentile(latencies[mode], 95) * 1000
        p50 = benchlib.percentile(latencies[mode], 50) * 1000
        summary[mode] = (rate, p95)
        rows.append([mode, f"{rate:.1f}", f"{p50:.2f}", f"{p95:.2f}", len(latencies[mode])])
    print()
    print(
        benchlib.markdown_table(
            ["metrics", "HL7 msg/s (median)", "C-FIND p50 ms", "C-FIND p95 ms", "C-FINDs"], rows
        )
    )
    rate_cost = (summary["off"][0] - summary["on"][0]) / summary["off"][0] * 100
    p95_cost = (summary["on"][1] - summary["off"][1]) / summary["off"][1] * 100
    print()
    print(
        f"cost of metrics: HL7 throughput {rate_cost:+.1f} %, C-FIND p95 {p95_cost:+.1f} %"
        f" (positive: slower with metrics); /metrics scraped {scrapes[0]} times"
    )
    for mode in MODES:
        if odd[mode]:
            print(
                f"metrics {mode}: {len(odd[mode])} C-FIND(s) not 1 match + Success: {odd[mode][:3]}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
