"""Several ``mwl serve`` nodes on one PostgreSQL schema, with HAProxy in front.

Used by the cluster tests (``-m cluster``) and by ``bench/cluster.py``. Everything
listens on loopback ports picked free at start; a node keeps its ports when it is
killed and started again, so HAProxy's configuration stays valid. HAProxy passes
MLLP and DICOM through as TCP and balances the web page as HTTP; every backend
checks the node's ``/health`` (liveness only: never ``/ready``, which depends on the
database, nor anything that depends on the RIS).

:func:`haproxy_config` is the one template of the balancer's configuration;
``docker/haproxy.cfg`` is it rendered for docker-compose.cluster.yml, and
tests/cluster/test_compose.py checks that the two agree.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lxml.html
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mwl.hl7.client import split_messages
from mwl.hl7.mllp import MllpFramer, frame
from mwl.store.engine import make_engine
from mwl.store.migrate import upgrade
from tests.serve import ADMIN_PASSWORD, Broker, broker_env, run_mwl, start_broker

HAPROXY = "/usr/sbin/haproxy"
HOST = "127.0.0.1"
POSTGRES_URL = os.environ.get("MWL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "samples" / "hl7" / "orm_o01_nw.hl7"
# Health checks: every 300 ms, two failures mark a node down, one success up again.
CHECK = "check port {web} inter 300ms fall 2 rise 1"
# HAProxy reaches the nodes from this loopback address, the one the nodes accept the
# PROXY protocol from (proxy_protocol_from): a test client that talks to a node
# directly, from 127.0.0.1, is then a caller of its own and sends no header.
BALANCER_SOURCE = "127.0.0.5"


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A loopback port nobody listens on now (the node binds it right after)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, host: str = HOST, timeout: float = 20.0) -> None:
    """Return once ``host:port`` accepts a connection; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


# --------------------------------------------------------------------------- HAProxy


@dataclass(frozen=True)
class Backend:
    """One broker as HAProxy sees it: a name, an address, and its three ports."""

    name: str
    host: str
    hl7: int
    dicom: int
    web: int


@dataclass(frozen=True)
class Frontends:
    """Where HAProxy listens: one address and a port per service."""

    host: str
    hl7: int
    dicom: int
    web: int
    stats_socket: str = ""


def haproxy_config(
    frontends: Frontends,
    backends: Sequence[Backend],
    resolvers: str = "",
    source: str = "",
) -> str:
    """HAProxy's configuration for ``backends`` behind ``frontends``.

    MLLP and DICOM are ``mode tcp`` (an HL7 connection or a DICOM association stays
    on one node); the web page is ``mode http``, round robin per request, which
    works because sessions and login limits are in the database. ``/health`` is the
    check of every backend: a node whose process answers is in the pool, whatever
    the RIS does. ``option redispatch`` with ``retries`` sends a connection refused
    by a dead node to another before the checks have marked it down.

    The MLLP and DICOM ``server`` lines carry ``send-proxy-v2``: the brokers, which
    accept the PROXY protocol from the balancer's address (``proxy_protocol_from``),
    see the real caller for AE profile hosts, allow-lists, per-address limits, logs
    and audit. The health checks go to the web port without a header. ``source``
    is the address HAProxy connects to the brokers from (empty: the system's choice).
    """
    stats = (
        f"    stats socket {frontends.stats_socket} mode 600 level admin\n"
        if frontends.stats_socket
        else ""
    )
    # Behind names (docker-compose): looked up again while running, so a broker
    # restarted with a new address is found, and HAProxy starts before every name is.
    dns = " resolvers dns init-addr last,libc,none" if resolvers else ""
    section = (
        f"\nresolvers dns\n    nameserver dns1 {resolvers}\n    hold valid 5s\n"
        if resolvers
        else ""
    )

    def servers(service: str) -> str:
        proxy = " send-proxy-v2" if service in ("hl7", "dicom") else ""
        origin = f" source {source}" if source else ""
        return "".join(
            f"    server {b.name} {b.host}:{getattr(b, service)} {CHECK.format(web=b.web)}"
            f"{proxy}{origin}{dns}\n"
            for b in backends
        )

    return f"""\
# Rendered by haproxy_config() in tests/cluster/harness.py (the cluster tests' balancer);
# docker/haproxy.cfg is regenerated with `python -m tests.cluster.harness > docker/haproxy.cfg`.
global
    maxconn 2000
{stats}{section}
defaults
    timeout connect 2s
    # An idle MLLP connection or DICOM association may stay open for long.
    timeout client 10m
    timeout server 10m
    timeout check 2s
    retries 3
    option redispatch

# Liveness only: /health answers while the process and its listeners run. Never
# /ready, which also needs the database; never the RIS outbox.
backend hl7_nodes
    mode tcp
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health
    http-check expect status 200
{servers("hl7")}
backend dicom_nodes
    mode tcp
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health
    http-check expect status 200
{servers("dicom")}
backend web_nodes
    mode http
    balance roundrobin
    timeout server 60s
    option httpchk
    http-check send meth GET uri /health
    http-check expect status 200
    # Plain HTTP from the balancer; the broker's web_trusted_proxies says whose
    # X-Forwarded-For to believe.
    option forwardfor
    # Which node answered: for the tests, and for a site debugging its balancer.
    http-response set-header X-Mwl-Node %s
{servers("web")}
frontend hl7
    mode tcp
    bind {frontends.host}:{frontends.hl7}
    default_backend hl7_nodes

frontend dicom
    mode tcp
    bind {frontends.host}:{frontends.dicom}
    default_backend dicom_nodes

frontend web
    mode http
    timeout client 60s
    bind {frontends.host}:{frontends.web}
    default_backend web_nodes
"""


def compose_haproxy_config() -> str:
    """``docker/haproxy.cfg``: two brokers by name in docker-compose.cluster.yml."""
    return haproxy_config(
        Frontends("0.0.0.0", 2575, 11112, 8080),
        [Backend(name, name, 2575, 11112, 8080) for name in ("broker1", "broker2")],
        resolvers="127.0.0.11:53",  # Docker's embedded DNS server
    )


class Haproxy:
    """HAProxy in the foreground on free loopback ports, in front of ``backends``."""

    def __init__(self, backends: Sequence[Backend], directory: Path) -> None:
        self.directory = directory
        self.frontends = Frontends(
            HOST, free_port(), free_port(), free_port(), str(directory / "haproxy.sock")
        )
        self.config_path = directory / "haproxy.cfg"
        self.config_path.write_text(
            haproxy_config(self.frontends, backends, source=BALANCER_SOURCE)
        )
        self.log_path = directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the configuration:\n{check.stderr}")
        with self.log_path.open("wb") as log:
            # -db: stay in the foreground, so that this process is HAProxy itself.
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # The admin socket exists once HAProxy has bound everything; a port some other
        # process took meanwhile makes it exit instead (its log says which).
        deadline = time.monotonic() + 20
        while not Path(self.frontends.stats_socket).exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        for port in (self.frontends.hl7, self.frontends.dicom, self.frontends.web):
            wait_for_port(port)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def command(self, line: str) -> str:
        """One command on the admin socket (``show stat``, ``show servers state``)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.frontends.stats_socket)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_status(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> UP / DOWN / ..., from ``show stat``."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        status: dict[tuple[str, str], str] = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") not in (None, "FRONTEND", "BACKEND", ""):
                status[(row["pxname"], row["svname"])] = row["status"].split(" ")[0]
        return status

    def wait_status(self, server: str, wanted: str, timeout: float = 20.0) -> float:
        """Wait until every backend reports ``server`` as ``wanted``; the seconds it took."""
        started = time.monotonic()
        while True:
            states = {s for (_, name), s in self.server_status().items() if name == server}
            if states == {wanted}:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{server} is {states}, not {wanted}")
            time.sleep(0.05)


# --------------------------------------------------------------------------- nodes


@dataclass
class Node:
    """One ``mwl serve`` on fixed ports; :meth:`kill` and :meth:`start` keep them."""

    name: str
    env: dict[str, str]
    cwd: Path
    broker: Broker | None = None
    starts: int = 0

    @property
    def hl7_port(self) -> int:
        return int(self.env["MWL_HL7_PORT"])

    @property
    def dicom_port(self) -> int:
        return int(self.env["MWL_DICOM_PORT"])

    @property
    def web_port(self) -> int:
        return int(self.env["MWL_WEB_PORT"])

    @property
    def alive(self) -> bool:
        return self.broker is not None and self.broker.process.poll() is None

    @property
    def output(self) -> list[str]:
        return self.broker.output if self.broker is not None else []

    @property
    def web(self) -> str:
        return f"http://{HOST}:{self.web_port}"

    def wait_line(self, text: str, timeout: float = 30.0) -> float:
        """Wait until this run of the node printed a line containing ``text``.

        Returns the monotonic time at which it was seen (polled every 20 ms).
        """
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.output)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not print {text!r}")
            time.sleep(0.02)
        return time.monotonic()

    def backend(self) -> Backend:
        return Backend(self.name, HOST, self.hl7_port, self.dicom_port, self.web_port)

    def start(self) -> None:
        """Start ``mwl serve`` and wait for "mwl is ready"."""
        if self.alive:
            raise RuntimeError(f"{self.name} is running")
        self.broker = start_broker(self.env, self.cwd)
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash or a power cut."""
        if self.broker is not None and self.broker.process.poll() is None:
            self.broker.process.kill()
            self.broker.process.wait(timeout=10)
            if self.broker.process.stdout is not None:
                self.broker.process.stdout.close()

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 30 s)."""
        if self.broker is not None:
            self.broker.stop()


@dataclass
class Cluster:
    """Nodes on one database and, optionally, HAProxy in front of them."""

    database_url: str
    nodes: list[Node]
    haproxy: Haproxy | None = None

    @property
    def front(self) -> Frontends:
        assert self.haproxy is not None, "this cluster has no balancer"
        return self.haproxy.frontends

    @property
    def web(self) -> str:
        return f"http://{HOST}:{self.front.web}"

    def stop(self) -> None:
        """Stop HAProxy and every node; kills what does not stop."""
        if self.haproxy is not None:
            self.haproxy.stop()

        def stop(node: Node) -> None:
            try:
                node.stop()
            except Exception:  # a node that will not stop is killed; the others still stop
                node.kill()

        # At once: each waits for its listeners to drain.
        stopping = [threading.Thread(target=stop, args=(node,)) for node in self.nodes]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()


def node_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of one node: :func:`tests.serve.broker_env`, on fixed free ports."""
    env = broker_env(
        database_url,
        MWL_HL7_PORT=str(free_port()),
        MWL_DICOM_PORT=str(free_port()),
        MWL_WEB_PORT=str(free_port()),
        MWL_PROXY_PROTOCOL_FROM=f'["{BALANCER_SOURCE}"]',
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def cluster(
    database_url: str,
    directory: Path,
    nodes: int = 2,
    *,
    balancer: bool = True,
    admin: bool = True,
    **extra: str,
) -> Iterator[Cluster]:
    """Start ``nodes`` brokers on ``database_url`` (migrated already) and HAProxy.

    Every process started is stopped when the block ends, also on failure.
    ``admin`` adds the web user ``admin`` (password :data:`tests.serve.ADMIN_PASSWORD`)
    before the nodes start; ``extra`` are ``MWL_*`` settings for every node.
    """
    if admin:
        added = run_mwl(
            ["user", "add", "admin", "--role", "admin"],
            broker_env(database_url),
            directory,
            ADMIN_PASSWORD + "\n",
        )
        if added.returncode != 0:
            raise RuntimeError(f"mwl user add failed: {added.stderr}")
    running = Cluster(
        database_url,
        [Node(f"node{i + 1}", node_env(database_url, **extra), directory) for i in range(nodes)],
    )
    try:
        # One after the other: two Python start-ups at once on two cores take as
        # long as in turn, and a failure is then clearly whose.
        for node in running.nodes:
            node.start()
        if balancer:
            running.haproxy = Haproxy([n.backend() for n in running.nodes], directory)
            running.haproxy.start()
            for node in running.nodes:
                running.haproxy.wait_status(node.name, "UP")
        yield running
    finally:
        running.stop()


# --------------------------------------------------------------------------- database


def schema_url(schema: str) -> str:
    """The URL of ``schema`` on the test server (search_path set to it)."""
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def _admin(statement: str) -> None:
    engine = create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


@contextlib.contextmanager
def migrated_schema(schema: str | None = None) -> Iterator[str]:
    """A new schema of this process's own, migrated once; dropped afterwards.

    The name is ours (a constant and the pid), never input, as in tests/databases.py.
    """
    schema = schema or f"mwl_cluster_{os.getpid()}"
    _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    _admin(f"CREATE SCHEMA {schema}")
    try:
        url = schema_url(schema)
        engine = make_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        yield url
    finally:
        _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# --------------------------------------------------------------------------- HL7


_ORDER_SETS = itertools.count(1)


class Orders:
    """Unique synthetic ORM^O01 orders from the sample, one accession per MSH-10."""

    def __init__(self, tag: str = "", start: dt.datetime | None = None) -> None:
        self.segments = [
            s.split("|")
            for s in split_messages(TEMPLATE.read_bytes())[0].decode("latin-1").split("\r")
            if s
        ]
        # Unique per process, per Orders made in it and per start time: test runs on one
        # database never reuse an MSH-10 or an accession number.
        self.tag = tag or (
            f"{os.getpid() % 100:02d}{next(_ORDER_SETS) % 100:02d}{int(time.time()) % 10000:04d}"
        )
        self.start = start or dt.datetime.now().replace(hour=8, minute=0, second=0, microsecond=0)
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def control_id(self, i: int) -> str:
        return f"C{self.tag}{i:07d}"

    def study_uid(self, i: int) -> str:
        return f"1.2.826.0.1.3680043.10.543.77.{int(self.tag)}.{i}"

    def placer(self, i: int) -> str:
        return f"PL{self.tag}{i:07d}"

    def sps_id(self, i: int) -> str:
        return f"S{self.tag}{i:07d}"[:16]

    def accession(self, i: int) -> str:
        return f"A{self.tag}{i:07d}"[:16]

    def make(self, i: int, modality: str = "CT", station: str = "") -> bytes:
        """Order ``i``: MSH-10 :meth:`control_id`, OBR-18 :meth:`accession`.

        ``station`` goes into ORC-18 (read as the station AE title with
        ``hl7_station_from_orc18``).
        """
        tag = self.tag
        start = self.start + dt.timedelta(minutes=5 * (i % 100))
        out = []
        for fields in self.segments:
            f = list(fields)
            name = f[0]
            if name == "MSH":
                f[6] = dt.datetime.now().strftime("%Y%m%d%H%M%S")  # MSH-7
                f[9] = self.control_id(i)  # MSH-10
            elif name == "PID":
                f[3] = f"P{tag}{i:07d}^^^HOSPITAL^MR"
            elif name in ("ORC", "OBR"):
                f[2], f[3] = self.placer(i), f"FI{tag}{i:07d}"
                if name == "ORC":
                    timing = f[7].split("^")
                    timing[3] = start.strftime("%Y%m%d%H%M%S")
                    f[7] = "^".join(timing)
                    if station:
                        f.extend([""] * (19 - len(f)))
                        f[18] = station
                else:
                    f[18] = self.accession(i)
                    f[19] = f"R{tag}{i:07d}"[:16]
                    f[20] = self.sps_id(i)
                    f[24] = modality
            elif name == "ZDS":
                parts = f[1].split("^")
                parts[0] = self.study_uid(i)
                f[1] = "^".join(parts)
            out.append("|".join(f))
        return ("\r".join(out) + "\r").encode("latin-1")

    def next_index(self) -> int:
        with self._lock:
            return next(self._counter)


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK payload ("" when there is none)."""
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA|"):
            return segment.split(b"|")[1].decode()
    return ""


class MllpLink:
    """One MLLP connection: send a message, wait for its ACK (raises OSError on loss)."""

    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = MllpFramer(1_048_576)
        self.pending: list[bytes] = []

    def exchange(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed before the ACK")
            self.pending.extend(self.framer.feed(data))
        return self.pending.pop(0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Outcome:
    """What a sender saw for each message: the ACK code, or "" when none came."""

    acked: dict[int, str] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def send_until(
    host: str,
    port: int,
    orders: Orders,
    stop: threading.Event,
    outcome: Outcome,
    limit: int = 1_000_000,
) -> None:
    """Send new orders on one connection until ``stop``; reconnect after a loss.

    A message whose ACK did not come (connection refused, reset, closed) is recorded
    in ``outcome.lost``; the sender goes on with a new connection and the next order.
    """
    link: MllpLink | None = None
    sent = 0
    while not stop.is_set() and sent < limit:
        if link is None:
            try:
                link = MllpLink(host, port)
            except OSError:
                time.sleep(0.05)
                continue
        i = orders.next_index()
        sent += 1
        try:
            code = ack_code(link.exchange(orders.make(i)))
        except OSError:
            link.close()
            link = None
            with outcome.lock:
                outcome.lost.add(i)
            continue
        with outcome.lock:
            outcome.acked[i] = code
    if link is not None:
        link.close()


def temporary_directory(prefix: str = "mwl-cluster-") -> tempfile.TemporaryDirectory[str]:
    """A directory for HAProxy's files and the nodes' working directory (bench/)."""
    return tempfile.TemporaryDirectory(prefix=prefix)


# --------------------------------------------------------------------------- web


class Browser:
    """A web client (requests) that fills in forms as a browser would submit them.

    Cookies are kept per host, not per port (RFC 6265), so one ``Browser`` talks
    to HAProxy and to each node directly with the same session cookie.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()

    def get(self, path: str, base: str = "", **kwargs: object) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        return self.http.get((base or self.base) + path, **kwargs)  # type: ignore[arg-type]

    def submit(
        self,
        page: requests.Response,
        action: str,
        changes: dict[str, str] | None = None,
        base: str = "",
    ) -> requests.Response:
        """Submit the form of ``page`` whose action contains ``action``, with ``changes``."""
        document = lxml.html.fromstring(page.text)
        forms = [f for f in document.forms if action in (f.action or "")]
        if not forms:
            raise AssertionError(f"no form with action {action!r} on {page.url}")
        form = forms[0]
        values = [(k, v) for k, v in form.form_values() if k not in (changes or {})]
        values.extend((changes or {}).items())
        target = (base or self.base) + form.action
        if (form.method or "GET").upper() == "GET":
            return self.http.get(target, params=values, allow_redirects=False, timeout=30)
        return self.http.post(target, data=values, allow_redirects=False, timeout=30)

    def login(self, username: str, password: str, base: str = "") -> requests.Response:
        page = self.get("/login", base)
        return self.submit(page, "/login", {"username": username, "password": password}, base)


if __name__ == "__main__":
    print(compose_haproxy_config(), end="")
