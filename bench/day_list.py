"""Day list cost: server time and HTML bytes per page at 100, 2,000 and 20,000 steps a day,
and the cost of live updates with 20 open pages polling /worklist/changes.

The app runs as ``mwl serve`` runs it (cheroot, 8 threads) in a child process on
127.0.0.1 (an ephemeral port), on a SQLite file in a temporary folder or on
PostgreSQL (``--backend postgresql``, a database of its own); synthetic steps are
written in bulk, all on one day (the worst case for a page: the sort and the count
cover every step of the day). Times are
loopback round trips over one keep-alive connection, which is the server's time plus
well under a millisecond. The comparison row of each size is ``size=500`` (the
largest page), as the page before paging rendered the whole day.

    python bench/day_list.py --steps 100 2000 20000 --requests 40 --poll-seconds 20
    python bench/day_list.py --backend postgresql --steps 2000 20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import (
    REPO_ROOT,
    drop_database,
    markdown_table,
    print_header,
    recreate_database,
    run_pg_url,
    shown_url,
    summary_ms,
)

sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import delete, insert, text  # noqa: E402

from mwl.admin.users import add_user  # noqa: E402
from mwl.config import Settings  # noqa: E402
from mwl.store.engine import make_engine, make_session_factory  # noqa: E402
from mwl.store.migrate import upgrade  # noqa: E402
from mwl.store.models import Patient, RequestedProcedure, ScheduledProcedureStep  # noqa: E402
from mwl.worklist.names import name_search_key  # noqa: E402

DAY = dt.date(2026, 11, 21)
PASSWORD = "correct horse battery staple"
PAGES = {
    "first page": "/?date={day}",
    "sorted by patient": "/?date={day}&sort=patient",
    "STAT first, page 5": "/?date={day}&sort=priority&page=5",
    "filtered (CT, 'syn-00001', by status)": "/?date={day}&modality=ct&q=syn-00001&sort=status",
    "size=500 (comparison)": "/?date={day}&size=500",
}
NAMES = ("Sample^Anna", "Example^Bert", "Test^Carla", "Demo^Dieter", "Muster^Erika", "Müller^Hans")
PRIORITIES = ("ROUTINE",) * 17 + ("STAT", "HIGH", "")


def fill(url: str, steps: int, days: int = 1) -> None:
    """Replace the database's steps by ``steps`` synthetic ones over ``days`` days from :data:`DAY`.

    The pages shown are :data:`DAY`'s, so with ``days`` > 1 the other days' steps are
    in the tables but not on the page (a database that has run for a while).
    """
    engine = make_engine(url)
    factory = make_session_factory(engine, writer=True)
    with factory.begin() as session:
        for model in (ScheduledProcedureStep, RequestedProcedure, Patient):
            session.execute(delete(model))
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        patients, procedures, sps = [], [], []
        for n in range(1, steps + 1):
            name = f"{NAMES[n % len(NAMES)]}{n}"
            patients.append(
                {
                    "id": n,
                    "patient_id": f"SYN-{n:06d}",
                    "issuer_of_patient_id": "HOSP",
                    "patient_name": name,
                    "patient_name_key": name_search_key(name),
                    "patient_birth_date": f"19{40 + n % 60:02d}0{1 + n % 9}1{n % 10}",
                    "patient_sex": "FM"[n % 2],
                    "updated_at": now,
                }
            )
            procedures.append(
                {
                    "id": n,
                    "patient_key": n,
                    "study_instance_uid": f"2.25.{n}",
                    "requested_procedure_id": f"RP{n}",
                    "accession_number": f"ACC{n:07d}",
                    "requested_procedure_description": "CT thorax with contrast",
                    "requested_procedure_priority": PRIORITIES[n % len(PRIORITIES)],
                    "updated_at": now,
                }
            )
            day = DAY + dt.timedelta(days=n % days)
            start = dt.datetime.combine(day, dt.time(6)) + dt.timedelta(seconds=(n * 2.1) % 57_600)
            sps.append(
                {
                    "id": n,
                    "procedure_key": n,
                    "scheduled_procedure_step_id": f"S{n}",
                    "modality": "MR" if n % 3 == 0 else "CT",
                    "scheduled_station_ae_title": f"{'MR' if n % 3 == 0 else 'CT'}0{n % 4}",
                    "start_datetime": start,
                    "start_time": start.strftime("%H%M%S"),
                    "status": "SCHEDULED" if n % 7 else "COMPLETED",
                    "updated_at": now,
                }
            )
        for model, rows in ((Patient, patients), (RequestedProcedure, procedures),
                            (ScheduledProcedureStep, sps)):  # fmt: skip
            for i in range(0, len(rows), 2000):
                session.execute(insert(model), rows[i : i + 2000])
    # Fresh statistics, as a database that has run for a while has them (autovacuum
    # on PostgreSQL): without them the planner guesses on bulk-loaded tables.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


def serve(url: str, port_out: Any, stop: Any) -> None:
    """The child process: the web app under cheroot until ``stop`` is set."""
    from web import create_app
    from web.server import WebServer

    engine = make_engine(url)
    app = create_app(
        Settings(database_url=url, web_secret_key="bench"),
        make_session_factory(engine),
        config={"WTF_CSRF_ENABLED": False},
    )
    server = WebServer(app, "127.0.0.1", 0, threads=8)
    server.start()
    port_out.send(server.address[1])
    stop.wait(3600)
    server.shutdown()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """One logged-in browser: a keep-alive connection with the session cookie."""

    def __init__(self, port: int, cookie: str = "") -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookie = cookie

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            self.conn.request("GET", path, headers={"Cookie": self.cookie})
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            # The server closed an idle keep-alive connection: a browser opens another.
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.conn.host, self.conn.port, timeout=30)
            self.conn.request("GET", path, headers={"Cookie": self.cookie})
            response = self.conn.getresponse()
        body = response.read()
        location = response.getheader("Location")
        if response.status == 302 and location and location.startswith("/?"):
            return self.get(location)  # e.g. page 5 of a day of 100 steps: the last page
        return response.status, body

    def log_in(self) -> None:
        body = f"username=bench&password={PASSWORD.replace(' ', '+')}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        self.conn.request("POST", "/login", body=body, headers=headers)
        response = self.conn.getresponse()
        response.read()
        cookie = response.getheader("Set-Cookie") or ""
        self.cookie = cookie.split(";", 1)[0]
        if response.status != 302 or not self.cookie:
            raise SystemExit(f"login failed: HTTP {response.status}")


def time_pages(client: Client, requests: int, server_pid: int) -> list[list[object]]:
    """Per page: median and p95 round trip, the server's CPU per request, KB, count line.

    The CPU per request (user + system time of the server process, over the timed
    requests) is the figure a loaded machine disturbs least: round trips include
    the time the server waited for a core.
    """
    rows: list[list[object]] = []
    for label, template in PAGES.items():
        path = template.format(day=DAY.isoformat())
        status, body = client.get(path)  # warm-up (template, statement caches)
        if status != 200:
            raise SystemExit(f"{path}: HTTP {status}")
        times = []
        cpu_before = cpu_seconds(server_pid)
        for _ in range(requests):
            start = time.perf_counter()
            status, body = client.get(path)
            times.append(time.perf_counter() - start)
        cpu_ms = 1000 * (cpu_seconds(server_pid) - cpu_before) / requests
        s = summary_ms(times)
        shown = re.search(rb'id="count">([^<]*)<', body)
        rows.append([label, s["median_ms"], s["p95_ms"], f"{cpu_ms:.1f}",
                     f"{len(body) / 1024:.1f}",
                     (shown.group(1).decode().strip() if shown else "")])  # fmt: skip
    return rows


def pollers(port: int, cookie: str, version: str, count: int, seconds: float, interval: float,
            server_pid: int) -> tuple[float, float, int]:  # fmt: skip
    """``count`` pages polling every ``interval`` s (0: back to back) for ``seconds``.

    Returns (requests per second, server CPU in % of one core, requests that failed).
    """
    done = [0] * count
    failed = [0] * count
    deadline = time.monotonic() + seconds
    path = f"/worklist/changes?date={DAY.isoformat()}&since={version}"

    def run(i: int) -> None:
        client = Client(port, cookie)
        next_at = time.monotonic() + (interval * i / count if interval else 0)
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if interval and now < next_at:
                time.sleep(min(next_at - now, deadline - now))
                continue
            status, _ = client.get(path)
            done[i] += 1
            failed[i] += status != 200
            next_at += interval

    cpu_before = cpu_seconds(server_pid)
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(server_pid) - cpu_before
    return sum(done) / elapsed, 100 * cpu / elapsed, sum(failed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        nargs="+",
        default=["100", "2000", "20000", "20000/10"],
        help="steps on the day shown, or N/D: N steps over D days (the page shows one)",
    )
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument("--poll-seconds", type=float, default=20, help="length of each poll run")
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10, help="seconds between polls")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--pg-url", default="", help="PostgreSQL database to (re)create; default: one of its own"
    )
    args = parser.parse_args()
    try:
        sizes = [tuple(int(p) for p in (text + "/1").split("/")[:2]) for text in args.steps]
    except ValueError:
        parser.error("--steps N or N/D")
    if not all(1 <= n <= 200_000 and 1 <= d <= 365 for n, d in sizes):
        parser.error("--steps 1..200000 over 1..365 days")
    if not 1 <= args.requests <= 10_000:
        parser.error("--requests 1..10000")
    if not 1 <= args.pollers <= 200 or not 1 <= args.poll_seconds <= 600:
        parser.error("--pollers 1..200, --poll-seconds 1..600")

    folder = Path(tempfile.mkdtemp(prefix="mwl-bench-daylist-"))
    url = f"sqlite:///{folder / 'mwl.db'}"
    if args.backend == "postgresql":
        url = run_pg_url("mwl_bench_daylist", args.pg_url or None)
        recreate_database(url)
    engine = make_engine(url)
    upgrade(engine)
    with make_session_factory(engine, writer=True).begin() as session:
        add_user(session, "bench", PASSWORD, "viewer")
    engine.dispose()
    print_header("day list: server time, HTML bytes, live-update polling")
    print(f"database: {shown_url(url)}; page size 100 (default)")
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    stop = context.Event()
    child = context.Process(target=serve, args=(url, child_end, stop), daemon=True)
    child.start()
    try:
        port = parent_end.recv()
        rows: list[list[object]] = []
        poll_rows: list[list[object]] = []
        for steps, days in sizes:
            fill(url, steps, days)
            client = Client(port)
            client.log_in()
            size = f"{steps:,}" + (f" over {days} days" if days > 1 else "")
            rows += [[size, *row] for row in time_pages(client, args.requests, child.pid)]
            _, body = client.get(f"/?date={DAY.isoformat()}")
            version = re.search(rb'data-version="([0-9a-f]+)"', body).group(1).decode()
            for interval in (args.interval, 0):
                rate, cpu, failed = pollers(port, client.cookie, version, args.pollers,
                                            args.poll_seconds, interval, child.pid)  # fmt: skip
                shown = f"every {interval:g} s" if interval else "back to back"
                poll_rows.append([size, shown, f"{rate:.1f}", f"{cpu:.1f}", failed])
        print(
            markdown_table(
                ["steps", "page", "median ms", "p95 ms", "server CPU ms", "KB", "count"],
                rows,
            )
        )
        print()
        print(f"{args.pollers} open pages polling /worklist/changes for {args.poll_seconds:g} s:")
        print(markdown_table(["steps", "each page polls", "requests/s",
                              "server CPU % of a core", "failed"], poll_rows))  # fmt: skip
    finally:
        stop.set()
        child.join(15)
        if child.is_alive():
            child.terminate()
        shutil.rmtree(folder, ignore_errors=True)
        if args.backend == "postgresql":
            drop_database(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
