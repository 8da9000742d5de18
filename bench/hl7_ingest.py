"""HL7 ingest of `mwl serve`: ORM messages per second with ACK after commit, and ACK latency.

Per backend (``--backends sqlite postgresql``) on a fresh database (SQLite in the
work folder; PostgreSQL ``mwl_bench_ingest_<pid>_<hex>`` unless ``--pg-url``, dropped
at the end unless ``--keep``), with ``mwl serve`` started on loopback (ephemeral
ports, stopped by SIGTERM at the end, also when this script gets SIGTERM/SIGINT):

1. **throughput** on 1 and 4 connections (``--connections``): each connection
   sends a message, waits for its ACK (the listener sends AA only after the
   transaction commits), sends the next; for ``--throughput-seconds`` or until
   ``--throughput-messages`` are sent. Prints messages/s (AA only), ACK latency
   p50/p99 and any non-AA answers;
2. **steady rate** ``--rate`` msg/s (default 20) for ``--steady-seconds`` on one
   connection (open-loop schedule: message k is due at t0 + k/rate; a late ACK
   delays only the sends behind it). Prints ACK latency p50/p99/max;
3. the peak RSS (VmHWM) of ``mwl serve``, and how its database commits (WAL and
   ``synchronous`` for SQLite, ``fsync``/``synchronous_commit`` for PostgreSQL:
   what "durable" means for the ACK).

Every message comes from ``samples/hl7/orm_o01_nw.hl7`` with its own MSH-10 control
ID, MSH-7 time, patient (PID-3), placer/filler order numbers (ORC-2/3, OBR-2/3),
accession number (OBR-18), procedure and step IDs (OBR-19/20) and Study Instance
UID (ZDS-1), all unique per run, so each one creates a new order.

``--profile`` instead runs the HL7 server in this process
(``mwl.hl7.server.Hl7Server(settings, session_factory)``), sends
``--profile-messages`` over one connection with cProfile on the connection thread,
and prints where the server time goes (parse, message log, apply_order, commit,
ACK), plus unprofiled timings of ``parse_order`` alone and of ``handle_message``
called without a socket.

Examples::

    python bench/hl7_ingest.py --backends sqlite postgresql
    python bench/hl7_ingest.py --backends sqlite --profile
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import itertools
import pstats
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib

from mwl.hl7.client import ack_summary, split_messages
from mwl.hl7.mllp import MllpFramer, frame

TEMPLATE = benchlib.REPO_ROOT / "samples" / "hl7" / "orm_o01_nw.hl7"
PG_NAME = "mwl_bench_ingest"  # + _<pid>_<hex> per run unless --pg-url
_MAX_ACK_BYTES = 1_048_576


# --------------------------------------------------------------------------- messages


class MessageFactory:
    """Unique ORM^O01 messages made from the sample template (thread-safe ``next()``)."""

    def __init__(self, template: Path = TEMPLATE, tag: str | None = None) -> None:
        self.segments = [
            s.split("|")
            for s in split_messages(template.read_bytes())[0].decode("latin-1").split("\r")
            if s
        ]
        # A run tag keeps control IDs and order numbers unique across runs on one database.
        self.tag = tag or f"{int(time.time()) % 1_000_000:06d}"
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def make(self, i: int) -> bytes:
        """Message number ``i`` of this run, segments separated by CR."""
        tag = self.tag
        now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
        start = dt.datetime(2026, 11, 21, 7, 0) + dt.timedelta(minutes=15 * (i % 48))
        out = []
        for fields in self.segments:
            f = list(fields)
            name = f[0]
            if name == "MSH":
                f[6] = now  # MSH-7 (f[1] is MSH-2: MSH-n is f[n - 1])
                f[9] = f"B{tag}{i:08d}"  # MSH-10
            elif name == "PID":
                f[3] = f"P{tag}{i:08d}^^^HOSPITAL^MR"  # PID-3
            elif name == "ORC":
                f[2], f[3] = f"PLC{tag}{i:08d}", f"FIL{tag}{i:08d}"  # ORC-2, ORC-3
                timing = f[7].split("^")  # ORC-7.4: start
                if len(timing) > 3:
                    timing[3] = start.strftime("%Y%m%d%H%M%S")
                    f[7] = "^".join(timing)
            elif name == "OBR":
                f[2], f[3] = f"PLC{tag}{i:08d}", f"FIL{tag}{i:08d}"  # OBR-2, OBR-3
                f[18] = f"A{tag}{i:08d}"[:16]  # OBR-18 accession (SH 16)
                f[19] = f"R{tag}{i:08d}"[:16]  # OBR-19 requested procedure ID
                f[20] = f"S{tag}{i:08d}"[:16]  # OBR-20 SPS ID
            elif name == "ZDS":
                parts = f[1].split("^")
                parts[0] = f"1.2.826.0.1.3680043.10.543.9.{int(tag)}.{i}"  # ZDS-1 study UID
                f[1] = "^".join(parts)
            out.append("|".join(f))
        return ("\r".join(out) + "\r").encode("latin-1")

    def next(self) -> bytes:
        with self._lock:
            i = next(self._counter)
        return self.make(i)


# --------------------------------------------------------------------------- client


class MllpConnection:
    """One MLLP connection that sends a message and waits for its ACK."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = MllpFramer(_MAX_ACK_BYTES)
        self.pending: list[bytes] = []

    def exchange(self, payload: bytes) -> tuple[float, str]:
        """Send one message; return (seconds until its ACK arrived, MSA-1 code)."""
        started = time.perf_counter()
        self.sock.sendall(frame(payload))
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the listener closed the connection without an ACK")
            self.pending.extend(self.framer.feed(data))
        seconds = time.perf_counter() - started
        code, _, _ = ack_summary(self.pending.pop(0))
        return seconds, code or "??"

    def close(self) -> None:
        self.sock.close()


@dataclass
class RunResult:
    label: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    late_sends: int = 0

    @property
    def accepted(self) -> int:
        return self.codes.get("AA", 0)

    def line(self) -> str:
        s = benchlib.summary_ms(self.latencies)
        rate = self.accepted / self.seconds if self.seconds else 0.0
        others = {k: v for k, v in self.codes.items() if k != "AA"}
        return (
            f"{self.label}: {self.accepted} AA in {self.seconds:.1f} s = {rate:.1f} msg/s; "
            f"ACK p50 {s.get('median_ms', '-')} ms, p99 {s.get('p99_ms', '-')} ms, "
            f"max {s.get('max_ms', '-')} ms"
            + (f"; non-AA {others}" if others else "")
            + (f"; errors {self.errors[:3]}" if self.errors else "")
            + (f"; {self.late_sends} sends behind schedule" if self.late_sends else "")
        )


def run_throughput(
    port: int, messages: MessageFactory, connections: int, seconds: float, max_messages: int
) -> RunResult:
    """``connections`` senders, each one message at a time, until time or count is spent."""
    result = RunResult(f"{connections} connection(s)", 0.0)
    lock = threading.Lock()
    budget = itertools.count()
    deadline = time.monotonic() + seconds

    def sender() -> None:
        try:
            conn = MllpConnection(benchlib.HOST, port)
        except OSError as exc:
            with lock:
                result.errors.append(f"connect: {exc}")
            return
        try:
            while time.monotonic() < deadline and next(budget) < max_messages:
                latency, code = conn.exchange(messages.next())
                with lock:
                    result.latencies.append(latency)
                    result.codes[code] += 1
        except OSError as exc:
            with lock:
                result.errors.append(str(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=sender, name=f"sender-{i}") for i in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    result.seconds = time.perf_counter() - started
    return result


def run_steady(
    port: int,
    messages: MessageFactory,
    rate: float,
    seconds: float,
    stop: threading.Event | None = None,
) -> RunResult:
    """One connection, message k due at t0 + k/rate, for ``seconds`` (or until ``stop``)."""
    result = RunResult(f"steady {rate:g} msg/s", 0.0)
    count = int(rate * seconds)
    conn = MllpConnection(benchlib.HOST, port)
    started = time.perf_counter()
    try:
        for k in range(count):
            if stop is not None and stop.is_set():
                break
            due = started + k / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif wait < -1.0 / rate:
                result.late_sends += 1
            latency, code = conn.exchange(messages.next())
            result.latencies.append(latency)
            result.codes[code] += 1
    except OSError as exc:
        result.errors.append(str(exc))
    finally:
        conn.close()
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- profile


def _profiled(fn: Callable[..., Any], profiles: dict[int, cProfile.Profile]) -> Callable[..., Any]:
    """Wrap ``fn`` so each call is profiled by a per-thread cProfile (one per connection)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        profile = profiles.setdefault(threading.get_ident(), cProfile.Profile())
        profile.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            profile.disable()

    return wrapper


def _breakdown(stats: pstats.Stats, messages: int) -> list[tuple[str, float]]:
    """Per-message milliseconds: the server's steps, then time by layer.

    Steps are the direct callees of the functions in ``mwl/hl7/intake.py`` (found
    from the profile, so renames in the intake do not break the breakdown). Layers
    sum each function's own time (``tottime``, no double counting) by where it lives:
    the database driver (sqlite3 / psycopg, including the wait for PostgreSQL),
    SQLAlchemy, mwl's code, and everything else (stdlib, logging, hl7apy).
    """
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    per = 1000.0 / max(1, messages)
    rows: list[tuple[str, float]] = []
    handle = [
        v[3] for k, v in raw.items() if k[0].endswith("mwl/hl7/intake.py") and k[2] == "handle"
    ]
    rows.append(("handle_message (all server work)", sum(handle) * per))
    steps: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, _tt, _ct, callers) in raw.items():
        for (caller_file, _cl, caller_func), (_c, _n, _t, ct) in callers.items():
            if caller_file.endswith("mwl/hl7/intake.py") and caller_func != "handle":
                where = (
                    "mwl/" + filename.split("/mwl/", 1)[1]
                    if "/mwl/" in filename
                    else (filename.rsplit("/", 1)[-1])
                )
                if func == "__exit__" and where == "contextlib.py":
                    label = f"  {caller_func} -> end of `with sessions.begin()` (flush + COMMIT)"
                elif func == "__enter__" and where == "contextlib.py":
                    label = f"  {caller_func} -> start of `with sessions.begin()`"
                else:
                    label = f"  {caller_func} -> {func} ({where})"
                steps[label] = steps.get(label, 0.0) + ct * per
    rows += sorted(((k, v) for k, v in steps.items() if v >= 0.05), key=lambda kv: -kv[1])
    layers = {
        "database driver (sqlite3/psycopg, incl. server wait)": 0.0,
        "SQLAlchemy": 0.0,
        "mwl code": 0.0,
        "other (stdlib, logging, ...)": 0.0,
    }
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        if "psycopg" in filename or "sqlite3" in func or "psycopg" in func:
            layers["database driver (sqlite3/psycopg, incl. server wait)"] += tt * per
        elif "/sqlalchemy/" in filename:
            layers["SQLAlchemy"] += tt * per
        elif "/mwl/" in filename:
            layers["mwl code"] += tt * per
        else:
            layers["other (stdlib, logging, ...)"] += tt * per
    rows += [(f"layer: {k}", v) for k, v in layers.items()]
    return rows


def profile_in_process(url: str, backend: str, count: int, workdir: Path) -> None:
    """Run Hl7Server in-process on ``url``; print cProfile and unprofiled breakdowns."""
    from mwl.config import load_settings
    from mwl.hl7.order_mapping import MappingOptions
    from mwl.hl7.parse import parse_order
    from mwl.hl7.server import Hl7Server
    from mwl.store.engine import make_engine, make_session_factory
    from mwl.store.migrate import upgrade

    benchlib.recreate_database(url)
    engine = make_engine(url)
    upgrade(engine)
    settings = load_settings(
        environ={}, database_url=url, bind_address=benchlib.HOST, hl7_port=0, log_level="WARNING"
    )
    server = Hl7Server(settings, make_session_factory(engine, writer=True))
    factory = MessageFactory()
    print(f"\n### profile, {backend}: {count} messages over 1 connection, server in-process")
    print(f"database: {benchlib.database_durability(url)}")
    try:
        # Unprofiled: the parser alone on this run's messages.
        sample = [factory.make(10_000_000 + i) for i in range(200)]
        options = MappingOptions.from_settings(settings)
        t0 = time.perf_counter()
        for raw in sample:
            parse_order(raw, options)
        parse_ms = 1000 * (time.perf_counter() - t0) / len(sample)
        # Unprofiled: handle_message without a socket (log, parse, apply, commit, ACK).
        direct = [factory.make(20_000_000 + i) for i in range(min(200, count))]
        t0 = time.perf_counter()
        for raw in direct:
            server.handle_message(raw, "bench")
        direct_ms = 1000 * (time.perf_counter() - t0) / len(direct)

        server.start()
        profiles: dict[int, cProfile.Profile] = {}
        # An attribute of this instance only: the connection loop calls self.handle_message.
        server.handle_message = _profiled(server.handle_message, profiles)  # type: ignore[method-assign]
        result = run_throughput(server.address[1], factory, 1, 600.0, count)
    finally:
        server.shutdown()
        engine.dispose()
    print(
        f"unprofiled: parse_order {parse_ms:.2f} ms/message; handle_message without "
        f"socket {direct_ms:.2f} ms/message ({1000 / direct_ms:.0f} msg/s on one thread)"
    )
    print(f"profiled run over the socket: {result.line()}")
    stream = io.StringIO()
    merged: pstats.Stats | None = None
    for profile in profiles.values():
        if merged is None:
            merged = pstats.Stats(profile, stream=stream)
        else:
            merged.add(profile)
    if merged is None:
        print("no profile collected")
        return
    n = result.accepted or 1
    print(
        "\nwhere handle_message time goes (cProfile, ms per message; the profiler inflates "
        "the absolute numbers, compare the parts):"
    )
    print(
        benchlib.markdown_table(
            ["part", "ms/message"], [(label, f"{ms:.2f}") for label, ms in _breakdown(merged, n)]
        )
    )
    merged.sort_stats("cumulative").print_stats(30)
    merged.sort_stats("tottime").print_stats(20)
    text = stream.getvalue()
    # Shorten site-packages paths for reading.
    text = text.replace(str(Path(sys.executable).parent.parent) + "/lib/", "")
    print("```\n" + text.strip() + "\n```")


# --------------------------------------------------------------------------- main


def bench_backend(
    backend: str, url: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    benchlib.recreate_database(url)
    if args.preload:
        import load_items

        load_items.load(url, args.preload, peers_dir=args.peers_dir)
    durability = benchlib.database_durability(url) if args.preload else ""
    mwl = benchlib.start_mwl(url, workdir / f"mwl-{backend}", life_s=int(args.max_total_s))
    record: dict[str, Any] = {"backend": backend, "command": mwl.shown_command()}
    try:
        durability = durability or benchlib.database_durability(url)
        factory = MessageFactory()
        print(f"\n## {backend}")
        print(f"- `{mwl.shown_command()}`")
        print(f"- {durability}; preloaded steps: {args.preload}")
        runs = []
        for connections in args.connections:
            cpu_before = mwl.cpu_seconds()
            r = run_throughput(
                mwl.hl7_port,
                factory,
                connections,
                args.throughput_seconds,
                args.throughput_messages,
            )
            runs.append(r)
            # The server's own CPU (all its threads) per accepted message: what the
            # message path costs, apart from waiting for the disk and the database.
            cpu_ms = 1000 * (mwl.cpu_seconds() - cpu_before) / max(r.accepted, 1)
            print(f"- throughput, {r.line()}; mwl serve CPU {cpu_ms:.2f} ms/msg", flush=True)
        steady = run_steady(mwl.hl7_port, factory, args.rate, args.steady_seconds)
        runs.append(steady)
        print(f"- {steady.line()}", flush=True)
        rss = mwl.vm_hwm_mb()
        print(f"- mwl serve peak RSS (VmHWM): {rss} MB")
        record.update(
            {
                "durability": durability,
                "rss_peak_mb": rss,
                "runs": [
                    {
                        "label": r.label,
                        "accepted": r.accepted,
                        "seconds": round(r.seconds, 2),
                        "msgs_per_s": round(r.accepted / r.seconds, 1) if r.seconds else 0,
                        "codes": dict(r.codes),
                        "errors": r.errors[:5],
                        "late_sends": r.late_sends,
                        **benchlib.summary_ms(r.latencies),
                    }
                    for r in runs
                ],
            }
        )
    finally:
        benchlib.cleanup("stopping mwl serve", mwl.stop)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument(
        "--pg-url",
        help="PostgreSQL database for the run; DROPPED and re-created "
        f"(default: {benchlib.PG_SERVER_URL}/{PG_NAME}_<pid>_<hex>, new per run)",
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--throughput-seconds", type=float, default=15.0)
    parser.add_argument(
        "--throughput-messages", type=int, default=5000, help="cap on messages per throughput run"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="steady rate, msg/s")
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    parser.add_argument(
        "--preload",
        type=int,
        default=0,
        help="load this many generated worklist items first (load_items)",
    )
    parser.add_argument("--peers-dir", type=Path, help="for --preload: default ../shared/peers")
    parser.add_argument(
        "--max-total-s",
        type=float,
        default=1800.0,
        help="mwl serve is killed after this long whatever happens",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the HL7 server in-process instead of the runs above",
    )
    parser.add_argument("--profile-messages", type=int, default=300)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and databases")
    args = parser.parse_args(argv)
    benchlib.exit_on_signals("hl7_ingest")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mwl-hl7-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    benchlib.print_header("HL7 ingest: ORM^O01 over MLLP, ACK after commit")
    print(f"template: {TEMPLATE.relative_to(benchlib.REPO_ROOT)}; work folder: {workdir}")
    urls = {
        b: (
            f"sqlite:///{workdir}/mwl-hl7.db"
            if b == "sqlite"
            else benchlib.run_pg_url(PG_NAME, args.pg_url)
        )
        for b in args.backends
    }
    print("databases: " + ", ".join(benchlib.shown_url(u) for u in urls.values()))
    status = 0
    try:
        for backend, url in urls.items():
            if args.profile:
                profile_in_process(url, backend, args.profile_messages, workdir)
                continue
            record = bench_backend(backend, url, args, workdir)
            if any(r["codes"].keys() - {"AA"} or r["errors"] for r in record["runs"]):
                status = 1
    finally:
        if not args.keep:
            for url in urls.values():
                benchlib.cleanup(f"dropping {url}", benchlib.drop_database, url)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
