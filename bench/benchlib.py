"""Shared helpers of the benchmark scripts: peers folder, `mwl serve`, DCMTK tools, signals.

The scripts in ``bench/`` are run on demand (never by the test suite) as
``python bench/<script>.py``; Python then puts ``bench/`` on ``sys.path``, so
they import this module by name.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import platform
import queue
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
# The peers' scripts live beside the repository (../shared/peers), not in it.
DEFAULT_PEERS_DIR = REPO_ROOT.parent / "shared" / "peers"
PEERS_DIR_ENV = "MWL_PEERS_DIR"
MWL_AE_TITLE = "MWL"
# Where DCMTK's tools are looked for: never PATH, whose first findscu may be pynetdicom's
# Python script of the same name (the virtualenv's bin/).
DCMTK_SEARCH_PATH = "/usr/bin:/usr/local/bin"
PG_SERVER_URL = "postgresql://postgres@127.0.0.1:5432"


# --------------------------------------------------------------------------- signals


def exit_on_signals(script: str) -> None:
    """Make SIGTERM and SIGINT a normal exit, so every ``finally`` stops what it started.

    The first signal raises ``SystemExit(128 + signum)`` in the main thread (where
    Python runs signal handlers); later ones only say that the script is already
    stopping, so they cannot cut the clean-up short. Every stop in the clean-up is
    bounded (SIGTERM, a wait, SIGKILL), and the servers run under ``timeout``.
    Child processes reset Python-level handlers at ``exec``.
    """
    stopping = False

    def handler(signum: int, _frame: object) -> None:
        nonlocal stopping
        name = signal.Signals(signum).name
        if stopping:
            os.write(2, f"{script}: {name} again: still stopping\n".encode())
            return
        stopping = True
        os.write(2, f"\n{script}: {name}: exiting; stopping what it started\n".encode())
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def die_with_parent_worker() -> None:
    """Initializer of client worker processes (forked: they inherit our handlers).

    SIGTERM kills them outright (``Pool.terminate`` sends it), SIGINT (Ctrl-C goes
    to the whole process group) is left to the parent, and they get SIGTERM when
    the parent dies.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()


# --------------------------------------------------------------------------- DCMTK


class NotDcmtkError(RuntimeError):
    """The tool found is missing, or is not DCMTK's (e.g. pynetdicom's ``findscu`` script)."""


def resolve_dcmtk(tool: str, explicit: str | Path | None = None, *, near: str | None = None) -> str:
    """The absolute path of DCMTK's ``tool`` (``findscu``, ``echoscu``, ``wlmscpfs``).

    ``explicit`` (an option such as ``--findscu``) is used as given; otherwise the
    folder of ``near`` (another DCMTK tool already resolved) is tried first, then
    :data:`DCMTK_SEARCH_PATH`, never ``$PATH``. The file must not be a script (the
    virtualenv's ``findscu`` is pynetdicom's Python script) and its ``--version``
    must name DCMTK.

    Raises
    ------
    NotDcmtkError
        With a message saying what was found and what to do.
    """
    if explicit is not None:
        found = shutil.which(str(explicit)) if os.sep not in str(explicit) else str(explicit)
    else:
        search = DCMTK_SEARCH_PATH
        if near:
            search = f"{Path(near).parent}:{search}"
        found = shutil.which(tool, path=search)
    if not found or not os.access(found, os.X_OK) or not Path(found).is_file():
        raise NotDcmtkError(
            f"DCMTK's {tool} not found (looked for {explicit or tool!s} in "
            f"{'the given path' if explicit else DCMTK_SEARCH_PATH}); "
            f"apt-get install -y dcmtk, or pass --{tool} PATH"
        )
    found = str(Path(found).resolve())
    with open(found, "rb") as f:
        head = f.read(256)
    if head.startswith(b"#!"):
        first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
        kind = "a Python script (pynetdicom's?)" if b"python" in head.lower() else "a script"
        raise NotDcmtkError(
            f"{found} is {kind} ({first}), not DCMTK's {tool}; pass --{tool} "
            f"/usr/bin/{tool} (apt-get install -y dcmtk)"
        )
    try:
        done = subprocess.run(
            [found, "--version"], capture_output=True, timeout=20, stdin=subprocess.DEVNULL
        )
        version = (done.stdout + done.stderr).decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NotDcmtkError(f"{found} --version failed: {exc}") from exc
    if "dcmtk" not in version.lower():
        raise NotDcmtkError(
            f"{found} is not DCMTK's {tool} (its --version does not name DCMTK: "
            f"{version.strip()[:120]!r}); pass --{tool} PATH"
        )
    return found


def dcmtk_version(tool_path: str) -> str:
    """``v3.6.7 2022-04-22`` from ``$dcmtk: findscu v3.6.7 2022-04-22 $`` (or '')."""
    try:
        done = subprocess.run([tool_path, "--version"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"\$dcmtk: \S+ (v[^$]*?)\s*\$", done.stdout.decode("utf-8", "replace"))
    return match.group(1) if match else ""


def dcmtk_first_path(folder: str, path: str | None = None) -> str:
    """``path`` (default ``$PATH``) with ``folder`` first, so tools run by name are DCMTK's.

    The peers' ``run_peer_bench.py`` runs ``echoscu``/``wlmscpfs``/``Orthanc`` by name;
    with the virtualenv's ``bin/`` first on ``$PATH`` pynetdicom's scripts of the
    same names would win. ``/usr/sbin`` (Orthanc) is appended when missing.
    """
    parts = [folder] + [p for p in (path or os.environ.get("PATH", "")).split(os.pathsep) if p]
    for extra in ("/usr/bin", "/usr/sbin", "/usr/local/sbin", "/bin"):
        if extra not in parts:
            parts.append(extra)
    return os.pathsep.join(dict.fromkeys(parts))


def put_dcmtk_first_on_path(folder: str, *envs: dict[str, str]) -> None:
    """Set PATH of this process (inherited by every child) and of ``envs`` DCMTK-first."""
    os.environ["PATH"] = dcmtk_first_path(folder)
    for env in envs:
        env["PATH"] = dcmtk_first_path(folder, env.get("PATH"))


# findscu -v -sr: one "Received Find Response N (Pending)" line per match.
FINDSCU_PENDING_RE = re.compile(r"Find Response:? \d+ \(Pending\)")
FINDSCU_FINAL_RE = re.compile(r"Received Final Find Response \(([^)]*)\)")
FINDSCU_FINAL_OK = "Received Final Find Response (Success)"


class ChildProcesses:
    """Client processes started by worker threads, so the main thread can end them all.

    Python runs signal handlers (and so the clean-up after SIGTERM) in the main
    thread only; a worker thread waiting for its child never sees the exception.
    :meth:`kill_all` kills the children still running and refuses new ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.closed = False

    def run(
        self, cmd: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None
    ) -> tuple[int | None, str] | None:
        """Run ``cmd`` to its end: (exit status or None on timeout, stdout+stderr).

        None when :meth:`kill_all` was called before it could start.
        """
        with self._lock:
            if self.closed:
                return None
            proc = subprocess.Popen(
                list(cmd),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
            )
            self._procs.add(proc)
        try:
            try:
                out, _ = proc.communicate(timeout=timeout_s)
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                code = None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with self._lock:
                self._procs.discard(proc)
        return code, (out or b"").decode("utf-8", "replace")

    def kill_all(self) -> int:
        """Kill every child still running; no new ones start. Returns how many were killed."""
        with self._lock:
            self.closed = True
            procs = list(self._procs)
        killed = 0
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                killed += 1
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return killed


# --------------------------------------------------------------------------- peers


class PeersMissingError(RuntimeError):
    """The shared peers folder (gen_worklist.py, run_peer_bench.py) is not there."""


def peers_dir(override: Path | None = None) -> Path:
    """Where ``gen_worklist.py`` and ``run_peer_bench.py`` are.

    ``override`` (a ``--peers-dir`` option), else ``$MWL_PEERS_DIR``, else
    ``../shared/peers`` relative to the repository root.

    Raises
    ------
    PeersMissingError
        With a message that says where it looked and how to point elsewhere.
    """
    candidate = override or Path(os.environ.get(PEERS_DIR_ENV, DEFAULT_PEERS_DIR))
    needed = ("gen_worklist.py", "run_peer_bench.py", "pynetdicom_null_scp.py")
    missing = [name for name in needed if not (candidate / name).is_file()]
    if missing:
        raise PeersMissingError(
            f"the peers' benchmark scripts are not in {candidate} "
            f"(missing: {', '.join(missing)}).\n"
            f"They live beside the repository, in ../shared/peers; pass --peers-dir DIR or set "
            f"{PEERS_DIR_ENV}=DIR to use another copy."
        )
    return candidate.resolve()


def _load_module(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PeersMissingError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_module_copy(name: str, folder: Path | None, filename: str) -> ModuleType:
    """A separate import of a peers' script under ``name`` (to change without side effects)."""
    return _load_module(name, peers_dir(folder) / filename)


def gen_worklist_module(folder: Path | None = None) -> ModuleType:
    """The shared generator (``gen_worklist.py``), imported from the peers folder."""
    return _load_module("gen_worklist", peers_dir(folder) / "gen_worklist.py")


def peer_bench_module(folder: Path | None = None) -> ModuleType:
    """The shared peer runner (``run_peer_bench.py``), imported from the peers folder."""
    gen_worklist_module(folder)  # it imports its sibling by name
    return _load_module("run_peer_bench", peers_dir(folder) / "run_peer_bench.py")


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """Median, p95, p99, min and max in milliseconds (rounded to 0.1 ms)."""
    if not seconds:
        return {"count": 0}
    ms = [1000.0 * s for s in seconds]
    return {
        "count": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
    }


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` formatted as ``1.23x``, or ``-`` when either is missing."""
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


# --------------------------------------------------------------------------- reporting


def command_line() -> str:
    """The command that started this script, shell-quoted, for the printed report."""
    return shlex.join([sys.executable, *sys.argv])


def machine_info() -> dict[str, str | int | None]:
    """nproc, CPU model, memory and load, Python and library versions."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_total = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import pydicom
    import pynetdicom
    import sqlalchemy

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total": mem_total,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "sqlalchemy": sqlalchemy.__version__,
    }


def print_header(title: str) -> None:
    """Title, the exact command and the machine, at the top of every report."""
    info = machine_info()
    print(f"# {title}")
    print(f"command: {command_line()}")
    print(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, {info['mem_total']}, "
        f"load {info['loadavg']}; Python {info['python']}, pydicom {info['pydicom']}, "
        f"pynetdicom {info['pynetdicom']}, SQLAlchemy {info['sqlalchemy']}"
    )
    print(f"started: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub table; columns whose header ends in a number unit are right-aligned."""
    align = [
        "---:"
        if h.endswith((" ms", "/s", " MB", "N", "x")) or h in {"matches", "expected"}
        else "---"
        for h in header
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- databases


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def run_pg_url(name: str, given: str | None = None) -> str:
    """The PostgreSQL URL of this run: ``given`` (``--pg-url``) as is, else one of its own.

    The default database is ``<name>_<pid>_<4 hex digits>`` on the local server, so two
    runs at the same time (also from two containers, whose pids may be equal) never
    share, drop or re-create each other's database.
    """
    if given:
        return given
    return f"{PG_SERVER_URL}/{name}_{os.getpid()}_{secrets.token_hex(2)}"


def shown_url(url: str) -> str:
    """``url`` without its password, for the report."""
    return make_url(url).render_as_string(hide_password=True)


def cleanup(what: str, fn: Callable[..., object], *args: object) -> None:
    """Run one clean-up step; report a failure instead of raising (the others still run)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - clean-up: report and go on
        print(f"clean-up: {what} failed: {exc}", file=sys.stderr)


def recreate_database(url: str) -> None:
    """Start from an empty database: delete the SQLite file, or DROP/CREATE on PostgreSQL.

    On PostgreSQL the database named in ``url`` is dropped and created again through
    the ``postgres`` maintenance database of the same server; refuse the names the
    test suite and the server itself use.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = parsed.database or ""
    if name in {"", "postgres", "test", "template0", "template1"} or not re.fullmatch(r"\w+", name):
        raise ValueError(
            f"refusing to drop database {name!r}: use a bench database such as mwl_bench"
        )
    admin = create_engine(
        parsed.set(drivername="postgresql+psycopg", database="postgres"),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    """Remove a bench database made by :func:`recreate_database` (after a run)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        recreate_database(url)
        return
    name = parsed.database or ""
    if name in {"", "postgres", "test", "template0", "template1"}:
        return
    admin = create_engine(
        parsed.set(drivername="postgresql+psycopg", database="postgres"),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def database_durability(url: str) -> str:
    """How a commit reaches the disk, for the report (SQLite pragmas / PostgreSQL settings)."""
    from mwl.store.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if is_postgres(url):
                fsync = conn.execute(text("SHOW fsync")).scalar()
                sync = conn.execute(text("SHOW synchronous_commit")).scalar()
                return f"PostgreSQL fsync={fsync}, synchronous_commit={sync}"
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync_level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            level = names.get(int(sync_level or 0), str(sync_level))
            return f"SQLite journal_mode={mode}, synchronous={level}"
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- mwl serve

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the benchmark process dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the `timeout` wrapper still bounds the lifetime


@dataclass
class MwlServer:
    """A running ``mwl serve`` subprocess and the addresses it printed."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    env: dict[str, str]
    command: list[str]
    hl7_port: int = 0
    dicom_port: int = 0
    web_port: int = 0
    ae_title: str = MWL_AE_TITLE
    pid: int = 0  # of mwl itself (proc is the `timeout` wrapper)
    stdout_lines: list[str] = field(default_factory=list)

    def vm_hwm_mb(self) -> float | None:
        """Peak resident set size (VmHWM) of the mwl process so far, in MB."""
        return _proc_status_mb(self.pid, "VmHWM")

    def vm_rss_mb(self) -> float | None:
        """Current resident set size (VmRSS) of the mwl process, in MB."""
        return _proc_status_mb(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU of the mwl process (all its threads) so far, from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def shown_command(self) -> str:
        """The command with its MWL_* environment, as a reader would type it."""
        env = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()) if k.startswith("MWL_")
        )
        return f"{env} {shlex.join(self.command)}"

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (forwarded by `timeout` to mwl), wait, SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        return self.proc.returncode

    def __enter__(self) -> MwlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _proc_status_mb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


_READY_LINES = {
    "hl7_port": re.compile(r"^HL7 MLLP listening on .*:(\d+)$"),
    "dicom_port": re.compile(r"^DICOM worklist SCP (\S+) listening on .*:(\d+)$"),
    "web_port": re.compile(r"^web page on http://.*:(\d+)/"),
}


def start_mwl(
    database_url: str,
    workdir: Path,
    *,
    life_s: int = 3600,
    ready_timeout_s: float = 120.0,
    extra_env: Mapping[str, str] | None = None,
) -> MwlServer:
    """Start ``mwl serve`` on loopback with ephemeral ports; return once it is ready.

    The process runs under ``timeout LIFE_S`` and gets SIGTERM when this process
    dies (PR_SET_PDEATHSIG on the wrapper, which forwards it), so it never
    outlives a crashed benchmark. Its stderr (the log) goes to ``workdir``.

    Raises
    ------
    RuntimeError
        When it exits or does not print ``mwl is ready`` within ``ready_timeout_s``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_")}
    env.update(
        {
            "MWL_DATABASE_URL": database_url,
            "MWL_BIND_ADDRESS": HOST,
            "MWL_HL7_PORT": "0",
            "MWL_DICOM_PORT": "0",
            "MWL_WEB_PORT": "0",
            "MWL_DICOM_AE_TITLE": MWL_AE_TITLE,
        }
    )
    env.update(extra_env or {})
    command = [sys.executable, "-m", "mwl.cli", "serve"]
    log_path = workdir / f"mwl-serve-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["timeout", "-k", "5", str(life_s), *command],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
            preexec_fn=_die_with_parent,
        )
    server = MwlServer(proc, workdir, log_path, env, command)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        # Keeps reading after start-up so the pipe never fills and blocks mwl.
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            server.stdout_lines.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="mwl-stdout", daemon=True).start()
    try:
        _wait_ready(server, lines, ready_timeout_s)
    except BaseException:
        server.stop()  # also on SIGTERM (SystemExit) while waiting
        raise
    server.pid = _child_pid(proc.pid) or proc.pid
    return server


def _wait_ready(server: MwlServer, lines: queue.Queue[str | None], ready_timeout_s: float) -> None:
    deadline = time.monotonic() + ready_timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(0.05, remaining))
        except queue.Empty:
            line = ""
        if line is None or remaining <= 0:
            server.stop()
            tail = server.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mwl serve did not become ready; log tail:\n{tail}")
        for name, pattern in _READY_LINES.items():
            match = pattern.match(line)
            if match:
                setattr(server, name, int(match.groups()[-1]))
                if name == "dicom_port":
                    server.ae_title = match.group(1)
        if line == "mwl is ready":
            return


def _child_pid(pid: int) -> int | None:
    """The (single) child of the `timeout` wrapper: the mwl process."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def free_port() -> int:
    """A currently free TCP port on loopback (for servers that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
