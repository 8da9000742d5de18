"""Worklist query latency of `mwl serve` side by side with wlmscpfs, Orthanc and a pynetdicom floor.

For each N in ``--n`` it:

1. loads N generated items into a fresh broker database per backend
   (``load_items.load``: SQLite file in the work folder, and/or a PostgreSQL
   database ``mwl_bench_query_<pid>_<hex>`` made for the run, dropped at the end
   unless ``--keep``; ``--pg-url`` names another) and writes the same N items as
   ``.wl`` files for the peers (``gen_worklist.generate`` from ``../shared/peers``);
2. starts, all at once on 127.0.0.1: ``mwl serve`` per backend (ephemeral ports),
   wlmscpfs and Orthanc on the ``.wl`` folder (started by the shared
   ``run_peer_bench.py``), and once per run the pynetdicom SCP that answers
   nothing (the floor);
3. sends the query shapes modalities use, as whole DCMTK ``findscu -W`` processes
   (``--findscu``, default the one in /usr/bin or /usr/local/bin, never a Python
   script of that name found on PATH) with ``TCP_NODELAY=1``, **interleaved**:
   each round sends every shape to every server (in a rotating order) before the
   next round, so the machine's noise falls on all servers alike. ``--warmup``
   rounds are untimed (calling AE ``W_<shape>``), then ``--queries`` timed
   rounds (calling AE ``Q_<shape>``);
4. reads the broker's server-side time of the same timed queries from its query
   log (``QueryLogEntry.duration_ms``: handler start to the last response handed to
   pynetdicom, selected by calling AE title), and the peak RSS (VmHWM) of each
   ``mwl serve``; then stops every server (also on SIGTERM/SIGINT: they become a
   normal exit, so every ``finally`` runs).

Shapes (``today`` = ``--date``, the generator's base date):

- ``today``: Modality + Scheduled Station AE Title + SPS Start Date (CT, CT01);
- ``week``: Modality + a 7-day SPS Start Date range centred on ``--date``;
- ``patient_id``: Patient ID of the middle item;
- ``accession``: Accession Number of the middle item;
- ``name``: Patient's Name wildcard ``Schmidt^A*`` (ASCII, case as stored: the
  peers match it byte-wise and case-sensitively, mwl case-insensitively; the
  generated names make all three agree);
- ``broad``: SPS Start Date range (with a Modality when that fits better) chosen
  per N so that it returns the count closest to ``--broad-target`` (500).

The expected number of matches per shape is computed from the generated items;
each server's count is checked against it (``MISMATCH`` flags a difference).

Example::

    python bench/query_latency.py --n 1000 10000 --backends sqlite postgresql \
        --queries 20 --json-out /tmp/query-latency.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import benchlib
import load_items
from sqlalchemy import select

from mwl.store.engine import make_engine
from mwl.store.models import QueryLogEntry

PG_NAME = "mwl_bench_query"  # + _<pid>_<hex> per run unless --pg-url
PEER_SERVERS = ("wlmscpfs", "orthanc", "pynetdicom-null")
FLOOR = "pynetdicom-null"
NAME_PATTERN = "Schmidt^A*"
SPS = "(0040,0100)[0]."
# Return keys of every shape (empty values: "send me this"), as in the peers' typical query.
RETURN_KEYS = [
    f"{SPS}Modality",
    f"{SPS}ScheduledStationAETitle",
    f"{SPS}ScheduledProcedureStepStartDate",
    f"{SPS}ScheduledProcedureStepStartTime",
    f"{SPS}ScheduledProcedureStepDescription",
    f"{SPS}ScheduledProcedureStepID",
    f"{SPS}ScheduledPerformingPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
]
ALL_SHAPES = ("today", "week", "patient_id", "accession", "name", "broad")


@dataclass(frozen=True)
class Shape:
    """One query shape at one N: its matching keys and the expected match count."""

    name: str
    description: str
    matching: dict[str, str]  # findscu key path -> value
    expected: int

    def keys(self) -> list[str]:
        keys = [f"{path}={value}" for path, value in self.matching.items()]
        return keys + [k for k in RETURN_KEYS if k not in self.matching]


@dataclass
class Target:
    """A server under test: where to send findscu and what to call it in the report."""

    label: str
    port: int
    called_ae: str
    stop: Any  # callable: () -> None
    mwl: benchlib.MwlServer | None = None
    database_url: str = ""
    shapes: tuple[str, ...] = ALL_SHAPES


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    matches: set[int] = field(default_factory=set)
    failures: int = 0


# --------------------------------------------------------------------------- shapes


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    """DICOM wildcard (``*``, ``?``) as a regex, case-sensitive (the peers' semantics)."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z",
        re.DOTALL,
    )


def _shift(date: str, days: int) -> str:
    return (dt.datetime.strptime(date, "%Y%m%d") + dt.timedelta(days=days)).strftime("%Y%m%d")


def make_shapes(facts: Sequence[load_items.ItemFacts], date: str, broad_target: int) -> list[Shape]:
    """The query shapes for one N, with their expected counts from the generated items."""
    if not facts:
        middle = load_items.ItemFacts("", "", "", "PID0000000", "ACC00000000", "")
    else:
        middle = facts[len(facts) // 2]
    week_low, week_high = _shift(date, -3), _shift(date, 3)
    name_re = _wildcard_regex(NAME_PATTERN)

    def count(pred: Any) -> int:
        return sum(1 for f in facts if pred(f))

    # Broad: the (modality, window) whose count is closest to the target, counted
    # from the items per (modality, date) (one pass, also at 1,000,000 items).
    per_day = Counter((f.modality, f.date) for f in facts)
    best: tuple[int, str, int] = (sys.maxsize, "", 0)
    for modality in ("", "CT", "US", "CR", "MR"):
        for half in range(0, 16):
            low, high = _shift(date, -half), _shift(date, half)
            hits = sum(
                k
                for (m, day), k in per_day.items()
                if (not modality or m == modality) and low <= day <= high
            )
            best = min(best, (abs(hits - broad_target), modality, half))
    _, broad_modality, broad_half = best
    broad_range = f"{_shift(date, -broad_half)}-{_shift(date, broad_half)}"
    broad_keys = {f"{SPS}ScheduledProcedureStepStartDate": broad_range}
    if broad_modality:
        broad_keys = {f"{SPS}Modality": broad_modality, **broad_keys}
    lo, hi = _shift(date, -broad_half), _shift(date, broad_half)

    return [
        Shape(
            "today",
            "Modality + Station + today",
            {
                f"{SPS}Modality": "CT",
                f"{SPS}ScheduledStationAETitle": "CT01",
                f"{SPS}ScheduledProcedureStepStartDate": date,
            },
            count(lambda f: f.modality == "CT" and f.station == "CT01" and f.date == date),
        ),
        Shape(
            "week",
            "Modality + 7-day date range",
            {
                f"{SPS}Modality": "CT",
                f"{SPS}ScheduledProcedureStepStartDate": f"{week_low}-{week_high}",
            },
            count(lambda f: f.modality == "CT" and week_low <= f.date <= week_high),
        ),
        Shape(
            "patient_id",
            "Patient ID",
            {"PatientID": middle.patient_id},
            count(lambda f: f.patient_id == middle.patient_id),
        ),
        Shape(
            "accession",
            "Accession Number",
            {"AccessionNumber": middle.accession_number},
            count(lambda f: f.accession_number == middle.accession_number),
        ),
        Shape(
            "name",
            f"Patient Name wildcard {NAME_PATTERN}",
            {"PatientName": NAME_PATTERN},
            count(lambda f: bool(name_re.match(f.patient_name))),
        ),
        Shape(
            "broad",
            f"broad (~{broad_target}): "
            + (f"Modality {broad_modality} + " if broad_modality else "")
            + f"date range {broad_range}",
            broad_keys,
            count(
                lambda f: (
                    (not broad_modality or f.modality == broad_modality) and lo <= f.date <= hi
                )
            ),
        ),
    ]


# --------------------------------------------------------------------------- findscu


def findscu_command(
    findscu: str, port: int, called_ae: str, calling_ae: str, keys: Sequence[str]
) -> list[str]:
    """One worklist C-FIND with DCMTK's ``findscu`` (an absolute path, see ``--findscu``).

    ``-sr`` logs one line per response instead of each dataset.
    """
    cmd = [findscu, "-v", "-W", "-sr", "-aet", calling_ae, "-aec", called_ae, "-to", "10"]
    for key in keys:
        cmd += ["-k", key]
    return cmd + [benchlib.HOST, str(port)]


def run_findscu(rb: ModuleType, cmd: list[str], timeout_s: float) -> tuple[float, int, bool, str]:
    """Time one whole findscu process; (seconds, matches, ok, output tail)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, env=rb.CLIENT_ENV)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, 0, False, "[timeout]"
    seconds = time.perf_counter() - started
    out = (done.stdout or b"").decode("utf-8", "replace") + (done.stderr or b"").decode(
        "utf-8", "replace"
    )
    matches = len(rb.PENDING_RE.findall(out))
    ok = done.returncode == 0 and rb.FINAL_OK in out
    return seconds, matches, ok, out[-1500:]


# --------------------------------------------------------------------------- servers


def start_peer(
    rb: ModuleType, kind: str, n_root: Path | None, workdir: Path, life_s: int
) -> Target:
    """Start a peer through the shared runner and wait for its C-ECHO (DCMTK's echoscu).

    The runner runs ``echoscu``, ``wlmscpfs`` and ``Orthanc`` by name: ``main`` has put
    DCMTK's folder first on PATH (of this process and of ``rb.CLIENT_ENV``). The peer
    is stopped here when anything, SIGTERM included, interrupts the wait.
    """
    if kind == "wlmscpfs":
        srv = rb.start_wlmscpfs(n_root, workdir, life_s, True)
    elif kind == "orthanc":
        srv = rb.start_orthanc(n_root / rb.WL_AET, workdir, life_s, True)
    else:
        srv = rb.start_pynetdicom_null(workdir, life_s, True)
    try:
        ready = rb.wait_ready(srv)
    except BaseException:
        rb.stop_server(srv)
        raise
    if not ready:
        rb.stop_server(srv)
        tail = srv.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{kind} did not answer C-ECHO; log tail:\n{tail}")
    shapes = ("today",) if kind == FLOOR else ALL_SHAPES
    return Target(kind, srv.port, srv.called_aet, lambda: rb.stop_server(srv), shapes=shapes)


def start_broker(backend: str, url: str, workdir: Path, life_s: int) -> Target:
    mwl = benchlib.start_mwl(url, workdir / f"mwl-{backend}", life_s=life_s)
    return Target(
        f"mwl-{backend}", mwl.dicom_port, mwl.ae_title, mwl.stop, mwl=mwl, database_url=url
    )


def server_side_ms(url: str, shape_names: Sequence[str]) -> dict[str, list[float]]:
    """duration_ms of the timed queries (calling AE ``Q_<shape>``) from the query log."""
    engine = make_engine(url)
    out: dict[str, list[float]] = {}
    try:
        with engine.connect() as conn:
            for name in shape_names:
                rows = (
                    conn.execute(
                        select(QueryLogEntry.duration_ms).where(
                            QueryLogEntry.calling_ae_title == _calling_ae("Q", name)
                        )
                    )
                    .scalars()
                    .all()
                )
                out[name] = [float(v) for v in rows]
    finally:
        engine.dispose()
    return out


def _calling_ae(prefix: str, shape: str) -> str:
    return f"{prefix}_{shape.upper()}"[:16]


# --------------------------------------------------------------------------- one N


def bench_n(
    n: int, args: argparse.Namespace, rb: ModuleType, floor: Target | None, workdir: Path
) -> dict[str, Any]:
    """Load, start, query, read back and stop for one N; return its result record."""
    life_s = int(args.budget_s + 900)
    facts: list[load_items.ItemFacts] = []
    loads: dict[str, dict[str, Any]] = {}
    urls = {}
    for backend in args.backends if "mwl" in args.servers else []:
        url = f"sqlite:///{workdir}/mwl-n{n}.db" if backend == "sqlite" else args.pg_url
        urls[backend] = url
        print(f"N={n}: loading {backend} ...", file=sys.stderr, flush=True)
        result, facts = load_items.load(url, n, recreate=True, peers_dir=args.peers_dir)
        loads[backend] = {"seconds": round(result.seconds, 1), "steps": result.steps}
    peer_kinds = [s for s in args.servers if s in ("wlmscpfs", "orthanc")]
    n_root = workdir / f"peers-n{n}"
    if peer_kinds:
        t0 = time.perf_counter()
        rb.gen_worklist.generate(n, n_root, rb.WL_AET, args.seed, args.date, 30, "ISO_IR 192")
        print(f"N={n}: wrote .wl files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not facts:
        facts = [
            load_items.facts(ds)
            for ds in load_items.iter_datasets(
                n, seed=args.seed, base_date=args.date, peers_dir=args.peers_dir, light=True
            )
        ]
    shapes = [s for s in make_shapes(facts, args.date, args.broad_target) if s.name in args.shapes]

    targets: list[Target] = []
    try:
        if "mwl" in args.servers:
            for backend, url in urls.items():
                targets.append(start_broker(backend, url, workdir, life_s))
        for kind in peer_kinds:
            targets.append(start_peer(rb, kind, n_root, workdir, life_s))
        if floor is not None:
            targets.append(floor)
        samples = _run_rounds(n, shapes, targets, args, rb)
        rss = {t.label: t.mwl.vm_hwm_mb() for t in targets if t.mwl}
        commands = {t.label: t.mwl.shown_command() for t in targets if t.mwl}
    finally:
        for t in targets:
            if t is not floor:
                benchlib.cleanup(f"stopping {t.label}", t.stop)
    server_side = {
        t.label: server_side_ms(t.database_url, [s.name for s in shapes]) for t in targets if t.mwl
    }
    if not args.keep:
        shutil.rmtree(n_root, ignore_errors=True)

    rows = []
    for shape in shapes:
        for t in targets:
            if shape.name not in t.shapes:
                continue
            s = samples[(t.label, shape.name)]
            row: dict[str, Any] = {
                "n": n,
                "shape": shape.name,
                "server": t.label,
                "expected": 0 if t.label == FLOOR else shape.expected,
                "matches": sorted(s.matches),
                "failures": s.failures,
                **benchlib.summary_ms(s.seconds),
            }
            if t.label in server_side:
                row["server_side"] = benchlib.summary_ms(
                    [ms / 1000.0 for ms in server_side[t.label][shape.name]]
                )
            rows.append(row)
    return {
        "n": n,
        "loads": loads,
        "rss_peak_mb": rss,
        "mwl_commands": commands,
        "shapes": [
            {
                "name": s.name,
                "description": s.description,
                "expected": s.expected,
                "findscu": "TCP_NODELAY=1 "
                + shlex.join(
                    findscu_command(args.findscu, 0, "<AE>", _calling_ae("Q", s.name), s.keys())
                ),
            }
            for s in shapes
        ],
        "rows": rows,
    }


def _run_rounds(
    n: int,
    shapes: Sequence[Shape],
    targets: Sequence[Target],
    args: argparse.Namespace,
    rb: ModuleType,
) -> dict[tuple[str, str], Samples]:
    samples: dict[tuple[str, str], Samples] = defaultdict(Samples)
    deadline = time.monotonic() + args.budget_s
    rounds = args.warmup + args.queries
    for rnd in range(rounds):
        if time.monotonic() > deadline:
            print(f"N={n}: time budget spent after {rnd} rounds", file=sys.stderr)
            break
        timed = rnd >= args.warmup
        shift = rnd % len(targets)
        order = list(targets[shift:]) + list(targets[:shift])  # rotate: no fixed position
        peers_done = args.peer_queries is not None and rnd >= args.warmup + args.peer_queries
        for shape in shapes:
            for t in order:
                if shape.name not in t.shapes:
                    continue
                if peers_done and t.label in ("wlmscpfs", "orthanc"):
                    continue
                ae = _calling_ae("Q" if timed else "W", shape.name)
                cmd = findscu_command(args.findscu, t.port, t.called_ae, ae, shape.keys())
                seconds, matches, ok, tail = run_findscu(rb, cmd, args.query_timeout_s)
                if not timed:
                    continue
                s = samples[(t.label, shape.name)]
                if ok:
                    s.seconds.append(seconds)
                    s.matches.add(matches)
                else:
                    s.failures += 1
                    print(f"[{t.label} {shape.name}] query failed:\n{tail}", file=sys.stderr)
        print(f"N={n}: round {rnd + 1}/{rounds} done", file=sys.stderr, flush=True)
    return samples


# --------------------------------------------------------------------------- report


def print_report(record: dict[str, Any]) -> None:
    n = record["n"]
    print(f"\n## N = {n:,}")
    for backend, info in record["loads"].items():
        print(f"- loaded {backend}: {info['steps']} steps in {info['seconds']} s")
    for label, mb in record["rss_peak_mb"].items():
        print(f"- {label} peak RSS (VmHWM) after the queries: {mb} MB")
    for label, cmd in record["mwl_commands"].items():
        print(f"- {label}: `{cmd}`")
    print("\nQueries (`<AE>`/port per server):")
    for shape in record["shapes"]:
        print(
            f"- {shape['name']}: {shape['description']}; expected {shape['expected']}\n"
            f"  `{shape['findscu']}`"
        )
    rows = record["rows"]
    by = {(r["server"], r["shape"]): r for r in rows}
    floor = by.get((FLOOR, "today"), {}).get("median_ms")
    table = []
    for r in rows:
        counts = ",".join(map(str, r["matches"])) or "-"
        flag = "" if r["server"] == FLOOR or r["matches"] == [r["expected"]] else " MISMATCH"
        ss = r.get("server_side", {})
        ratios = ["", "", ""]
        if r["server"].startswith("mwl"):
            med = r.get("median_ms")
            ratios = [
                benchlib.ratio(by.get((peer, r["shape"]), {}).get("median_ms"), med)
                for peer in ("wlmscpfs", "orthanc")
            ] + [benchlib.ratio(med, floor)]
        table.append(
            [
                r["shape"],
                r["server"],
                f"{counts} ({r['expected']}){flag}",
                r.get("count", 0),
                r.get("median_ms", "-"),
                r.get("p95_ms", "-"),
                ss.get("median_ms", ""),
                ss.get("p95_ms", ""),
                *ratios,
                r["failures"],
            ]
        )
    print()
    print(
        benchlib.markdown_table(
            [
                "shape",
                "server",
                "matches (expected)",
                "queries",
                "median ms",
                "p95 ms",
                "server-side median ms",
                "server-side p95 ms",
                "wlmscpfs/mwl x",
                "Orthanc/mwl x",
                "mwl/floor x",
                "failures",
            ],
            table,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"]
    )
    parser.add_argument(
        "--pg-url",
        help="PostgreSQL database for the broker; DROPPED and re-created per N "
        f"(default: {benchlib.PG_SERVER_URL}/{PG_NAME}_<pid>_<hex>, new per run)",
    )
    parser.add_argument(
        "--servers", nargs="+", choices=["mwl", *PEER_SERVERS], default=["mwl", *PEER_SERVERS]
    )
    parser.add_argument("--shapes", nargs="+", choices=ALL_SHAPES, default=list(ALL_SHAPES))
    parser.add_argument("--queries", type=int, default=20, help="timed rounds")
    parser.add_argument(
        "--peer-queries",
        type=int,
        help="timed rounds for wlmscpfs and Orthanc (the first ones; default: --queries):"
        " at 100,000 items each of their queries takes seconds",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=900.0,
        help="stop starting rounds after this many seconds per N",
    )
    parser.add_argument("--query-timeout-s", type=float, default=120.0)
    parser.add_argument(
        "--date",
        default=load_items.DEFAULT_BASE_DATE,
        help="'today' of the queries and centre of the generated schedule",
    )
    parser.add_argument("--seed", type=int, default=load_items.DEFAULT_SEED)
    parser.add_argument("--broad-target", type=int, default=500)
    parser.add_argument(
        "--findscu",
        help="DCMTK's findscu (default: the one in /usr/bin or /usr/local/bin; a Python "
        "script such as pynetdicom's findscu is refused); echoscu and wlmscpfs are "
        "taken from the same folder",
    )
    parser.add_argument("--peers-dir", type=Path, help="default: ../shared/peers")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and databases")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    benchlib.exit_on_signals("query_latency")
    args.pg_url = benchlib.run_pg_url(PG_NAME, args.pg_url)

    try:
        rb = benchlib.peer_bench_module(args.peers_dir)
    except benchlib.PeersMissingError as exc:
        print(f"query_latency: {exc}", file=sys.stderr)
        return 2
    try:
        args.findscu = benchlib.resolve_dcmtk("findscu", args.findscu)
        dcmtk = {"findscu": args.findscu}
        for tool in ("echoscu",) + (("wlmscpfs",) if "wlmscpfs" in args.servers else ()):
            dcmtk[tool] = benchlib.resolve_dcmtk(tool, near=args.findscu)
    except benchlib.NotDcmtkError as exc:
        print(f"query_latency: {exc}", file=sys.stderr)
        return 2
    if len({str(Path(p).parent) for p in dcmtk.values()}) != 1:
        print(f"query_latency: DCMTK tools in different folders: {dcmtk}", file=sys.stderr)
        return 2
    # The shared runner runs echoscu/wlmscpfs by name, with os.environ or its CLIENT_ENV
    # (copied when it was imported): DCMTK's folder goes first in both.
    benchlib.put_dcmtk_first_on_path(str(Path(args.findscu).parent), rb.CLIENT_ENV)
    if not shutil.which("timeout"):
        parser.error("timeout not found (coreutils)")
    if "orthanc" in args.servers and not (
        shutil.which("Orthanc") and Path(rb.ORTHANC_WL_PLUGIN).exists()
    ):
        print("Orthanc or its worklist plugin is missing; skipping orthanc", file=sys.stderr)
        args.servers = [s for s in args.servers if s != "orthanc"]
    rb.set_client_nodelay(True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mwl-query-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    benchlib.print_header("Worklist query latency: whole findscu -W processes, TCP_NODELAY=1")
    print(
        f"work folder: {workdir}; rounds: {args.warmup} warm-up + {args.queries} timed, "
        f"interleaved over servers and shapes"
    )
    print(
        f"DCMTK {benchlib.dcmtk_version(args.findscu)}: "
        + ", ".join(f"{tool} {path}" for tool, path in dcmtk.items())
    )
    if "postgresql" in args.backends and "mwl" in args.servers:
        print(f"PostgreSQL database: {benchlib.shown_url(args.pg_url)}")
    records: list[dict[str, Any]] = []
    floor: Target | None = None
    status = 0
    try:
        if FLOOR in args.servers:
            floor = start_peer(rb, FLOOR, None, workdir, int(len(args.n) * (args.budget_s + 900)))
        for n in args.n:
            record = bench_n(n, args, rb, floor, workdir)
            records.append(record)
            print_report(record)
            sys.stdout.flush()
            if any(
                r["failures"] or (r["server"] != FLOOR and r["matches"] != [r["expected"]])
                for r in record["rows"]
            ):
                status = 1
    finally:
        if floor is not None:
            benchlib.cleanup("stopping the floor SCP", floor.stop)
        if not args.keep:
            if "postgresql" in args.backends and "mwl" in args.servers:
                benchlib.cleanup("dropping the database", benchlib.drop_database, args.pg_url)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
        elif "postgresql" in args.backends and "mwl" in args.servers:
            print(f"kept: {benchlib.shown_url(args.pg_url)}", file=sys.stderr)
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "command": benchlib.command_line(),
                    "machine": benchlib.machine_info(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": records,
                },
                indent=2,
            )
        )
        print(f"\nJSON written to {args.json_out}")
    medians = [r for rec in records for r in rec["rows"] if r["server"].startswith("mwl")]
    if medians:
        print(
            f"\nmwl median over all shapes and N: "
            f"{statistics.median(r.get('median_ms', 0) for r in medians):.1f} ms"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
