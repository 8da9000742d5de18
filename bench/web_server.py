"""Web server request latency: waitress (before issue 19) against cheroot, plain and HTTPS.

Serves the admin app in this process on 127.0.0.1 (an ephemeral port, a SQLite file
in a temporary folder, synthetic data only) with each server in turn, and times
sequential requests over one keep-alive connection: the login form (a template, no
database) and the health check (one database read). Waitress needs to be installed
for its row (``pip install waitress``); it is no longer a dependency.

    python bench/web_server.py --requests 500 --rounds 3
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchlib import REPO_ROOT, markdown_table, print_header

sys.path.insert(0, str(REPO_ROOT))

from mwl.config import Settings  # noqa: E402
from mwl.store.engine import make_engine, make_session_factory  # noqa: E402
from mwl.store.migrate import upgrade  # noqa: E402
from mwl.tls import ReloadingContext, TlsFiles  # noqa: E402
from tests.certificates import issue, make_ca  # noqa: E402
from web import create_app  # noqa: E402
from web.server import WebServer  # noqa: E402

PATHS = ("/login", "/healthz")


@contextmanager
def waitress_server(app: Any) -> Iterator[int]:
    """The server of mwl before issue 19, as web/server.py ran it."""
    import waitress
    from waitress import wasyncore

    socket_map: dict[int, Any] = {}
    server: Any = waitress.create_server(
        app, map=socket_map, host="127.0.0.1", port=0, threads=8, ident="mwl"
    )
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            wasyncore.loop(timeout=0.2, map=socket_map, count=1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        stop.set()
        thread.join(timeout=10)
        wasyncore.close_all(socket_map)
        server.task_dispatcher.shutdown()


@contextmanager
def cheroot_server(app: Any, tls: ReloadingContext | None = None) -> Iterator[int]:
    server = WebServer(app, "127.0.0.1", 0, threads=8, tls=tls)
    server.start()
    try:
        yield server.address[1]
    finally:
        server.shutdown()


def time_requests(
    connect: Callable[[], http.client.HTTPConnection], path: str, n: int
) -> list[float]:
    """Seconds per GET of ``path``, ``n`` times over one keep-alive connection."""
    conn = connect()
    try:
        for _ in range(20):  # warm-up: TLS handshake, template cache, pool
            conn.request("GET", path)
            conn.getresponse().read()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            if response.status != 200:
                raise SystemExit(f"{path}: HTTP {response.status}")
        return times
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="timed requests per path")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (median kept)")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.rounds <= 20:
        parser.error("--requests 1..100000, --rounds 1..20")

    folder = Path(tempfile.mkdtemp(prefix="mwl-bench-web-"))
    try:
        url = f"sqlite:///{folder / 'mwl.db'}"
        engine = make_engine(url)
        upgrade(engine)
        ca = make_ca(folder, "Bench CA")
        leaf = issue(ca, folder, "bench-web", server=True)
        app = create_app(
            Settings(database_url=url, web_secret_key="bench"), make_session_factory(engine)
        )
        client_tls = ssl.create_default_context(cafile=str(ca.cert))

        def plain(port: int) -> Callable[[], http.client.HTTPConnection]:
            return lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def https(port: int) -> Callable[[], http.client.HTTPConnection]:
            return lambda: http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=10, context=client_tls
            )

        servers: list[tuple[str, Callable[[], Any], Callable[[int], Any]]] = []
        try:
            import waitress  # noqa: F401

            servers.append(("waitress, HTTP", lambda: waitress_server(app), plain))
        except ImportError:
            print("waitress is not installed: its row is left out", file=sys.stderr)
        servers.append(("cheroot, HTTP", lambda: cheroot_server(app), plain))
        tls = ReloadingContext(TlsFiles(leaf.cert, leaf.key), service="web")
        servers.append(("cheroot, HTTPS", lambda: cheroot_server(app, tls), https))

        print_header("web server request latency")
        rows = []
        for name, serve, connect in servers:
            medians: dict[str, list[float]] = {path: [] for path in PATHS}
            p90s: dict[str, list[float]] = {path: [] for path in PATHS}
            for _ in range(args.rounds):
                with serve() as port:
                    for path in PATHS:
                        times = time_requests(connect(port), path, args.requests)
                        medians[path].append(statistics.median(times) * 1000)
                        p90s[path].append(statistics.quantiles(times, n=10)[-1] * 1000)
            rows.append(
                [name]
                + [
                    f"{statistics.median(medians[p]):.2f} / {statistics.median(p90s[p]):.2f}"
                    for p in PATHS
                ]
            )
        print()
        print(
            markdown_table(
                ["server", *(f"GET {p}: median / p90 ms" for p in PATHS)],
                rows,
            )
        )
        engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
