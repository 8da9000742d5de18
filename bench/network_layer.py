"""The DICOM network layer of `mwl serve` on the wire, side by side with wlmscpfs and Orthanc.

Not a test: prints the figures of the network-layer targets (docs/performance.md).
Loads ``--n`` generated items (default 1,500, ``load_items``) into a fresh SQLite
database and the same items as ``.wl`` files, starts ``mwl serve`` (plain and TLS
ports, a throw-away certificate), wlmscpfs and Orthanc, and measures with a raw
client (tests/rawscu.py for the association, a byte-level reader for the answers,
the same for every server):

1. idle: the servers' CPU with ``--idle`` silent associations open (raw sockets,
   nothing sent after the A-ASSOCIATE-RQ);
2. ``--concurrent`` associations open at once against mwl (from 10 loopback source
   addresses: the per-address limit is 50), a C-ECHO on a new association beside
   them, mwl's CPU meanwhile;
3. C-CANCEL right after the first Pending response of the all-items answer,
   ``--cancels`` times: the time to the final response and its status;
4. ``--aborts`` A-ABORTs and TCP resets in the middle of that answer: mwl's
   threads, file descriptors, RSS and CPU 15 s later against before;
5. the all-items answer with every key the broker knows: microseconds per match,
   from the request to the final response as the client sees it (``--rounds``
   timed rounds after one warm-up, interleaved over the servers);
6. TLS against plain: association set-up (connect, handshake, A-ASSOCIATE) and a
   30-match query, medians of ``--rounds``.

The 50-modality load with HL7 beside it is ``bench/concurrency.py``.

Example::

    python bench/network_layer.py --n 1500 --rounds 10
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import benchlib
import load_items

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from mwl.dicom import keys as keytable  # noqa: E402
from tests.certificates import issue, make_ca  # noqa: E402
from tests.rawscu import AbortedError, AssociationRejectedError, RawScu  # noqa: E402

PENDING = (0xFF00, 0xFF01)


@dataclass
class Target:
    name: str
    port: int
    called: str
    pid: int
    stop: Callable[[], object]


def full_identifier(**sps_values: str) -> Dataset:
    """Every key the broker knows, universal (the longest responses)."""

    def level(lv: keytable.Level) -> Dataset:
        out = Dataset()
        for spec in keytable.keys_at(lv):
            if spec.vr == "SQ":
                setattr(out, spec.keyword, Sequence([]))
            elif spec.vr not in ("US", "DS", "IS"):
                setattr(out, spec.keyword, "")
        return out

    ds = level(keytable.Level.TOP)
    sps = level(keytable.Level.SPS)
    for keyword, value in sps_values.items():
        setattr(sps, keyword, value)
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _status_of(command: bytes) -> int:
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHL", command, offset)
        if (group, element) == (0, 0x0900):
            return int(struct.unpack_from("<H", command, offset + 8)[0])
        offset += 8 + length
    return -1


def read_answer(scu: RawScu, on_first: Callable[[], None] | None = None) -> tuple[int, int, float]:
    """Read one C-FIND answer at byte level: (matches, final status, time of the final)."""
    sock, buffer = scu.sock, scu._buffer
    matches, command = 0, bytearray()
    while True:
        while len(buffer) < 6 or len(buffer) < 6 + struct.unpack_from(">L", buffer, 2)[0]:
            data = sock.recv(1 << 20)
            if not data:
                raise AbortedError()
            buffer += data
        length = struct.unpack_from(">L", buffer, 2)[0]
        pdu = bytes(buffer[: 6 + length])
        del buffer[: 6 + length]
        if pdu[0] != 0x04:
            raise AbortedError()
        offset = 6
        while offset < len(pdu):
            item_length, _context, control = struct.unpack_from(">LBB", pdu, offset)
            if control & 1:
                command += pdu[offset + 6 : offset + 4 + item_length]
                if control & 2:
                    status = _status_of(bytes(command))
                    command = bytearray()
                    if status in PENDING:
                        matches += 1
                        if matches == 1 and on_first is not None:
                            on_first()
                    else:
                        return matches, status, time.perf_counter()
            offset += 4 + item_length


def connect(target: Target, calling: str = "BENCHSCU", **kwargs: object) -> RawScu:
    scu = RawScu(benchlib.HOST, target.port, **kwargs)  # type: ignore[arg-type]
    scu.associate(calling=calling, called=target.called)
    return scu


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


# --------------------------------------------------------------------------- scenarios


def idle_cpu(target: Target, count: int, seconds: float) -> tuple[int, float]:
    """(associations established, CPU share of one core) with ``count`` silent ones."""
    held, established = [], 0
    for index in range(count):
        bind = (f"127.0.0.{2 + index // 50}", 0)
        try:
            scu = RawScu(benchlib.HOST, target.port, bind=bind, timeout=5)
            held.append(scu)
            scu.associate(calling=f"IDLE{index:03d}", called=target.called)
            established += 1
        except (AssociationRejectedError, AbortedError, OSError):
            pass
    time.sleep(1.0)
    before = cpu_seconds(target.pid)
    time.sleep(seconds)
    share = (cpu_seconds(target.pid) - before) / seconds
    for scu in held:
        scu.close()
    return established, share


def concurrent_echo(target: Target, count: int, seconds: float) -> dict[str, object]:
    """``count - 1`` associations held, the last one a C-ECHO made again and again.

    So ``count`` are open at once, within the default limit (500).
    """
    held, established = [], 0
    for index in range(count - 1):
        scu = RawScu(benchlib.HOST, target.port, bind=(f"127.0.0.{2 + index // 50}", 0))
        held.append(scu)
        try:
            scu.associate(calling=f"MOD{index:03d}", called=target.called)
            established += 1
        except AssociationRejectedError:
            pass
    before = cpu_seconds(target.pid)
    echoes = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        t0 = time.perf_counter()
        scu = RawScu(benchlib.HOST, target.port, bind=("127.0.0.200", 0))
        scu.associate(calling="ECHOSCU", called=target.called)
        status = scu.echo(scu.context_for(1))
        scu.release()
        echoes.append(time.perf_counter() - t0)
        assert status == 0
        time.sleep(0.2)
    share = (cpu_seconds(target.pid) - before) / (time.monotonic() - started)
    for scu in held:
        scu.close()
    return {
        "established": established + 1,
        "echo_ms": 1000 * statistics.median(echoes),
        "echo_max_ms": 1000 * max(echoes),
        "cpu": share,
    }


def cancels(target: Target, times: int) -> dict[str, object]:
    identifier = full_identifier()
    latencies, statuses, after = [], [], []
    scu = connect(target, calling="CANCELER")
    for message_id in range(1, times + 1):
        sent: dict[str, float] = {}

        def cancel(message_id: int = message_id, sent: dict[str, float] = sent) -> None:
            sent["at"] = time.perf_counter()
            scu.send_cancel(message_id=message_id)

        scu.send_find(identifier, message_id=message_id)
        matches, status, at = read_answer(scu, on_first=cancel)
        latencies.append(at - sent["at"])
        statuses.append(status)
        after.append(matches - 1)
    scu.release()
    return {
        "cancel_ok": sum(s == 0xFE00 for s in statuses),
        "times": times,
        "cancel_p50_ms": 1000 * statistics.median(latencies),
        "cancel_max_ms": 1000 * max(latencies),
        "after_p50": statistics.median(after),
        "statuses": sorted({f"0x{s:04X}" for s in statuses}),
    }


def aborts(target: Target, count: int) -> dict[str, object]:
    pid = target.pid
    warm = connect(target, calling="WARM")
    warm.send_find(full_identifier())
    read_answer(warm)
    warm.release()
    time.sleep(2.0)
    before = (proc_status(pid, "Threads"), fds(pid), proc_status(pid, "VmRSS"))
    for index in range(count):
        scu = connect(target, calling="ABORTER")
        scu.send_find(full_identifier())
        scu.read_pdu()  # the first response is on its way
        scu.abort() if index % 2 else scu.reset()
    time.sleep(10.0)
    cpu0 = cpu_seconds(pid)
    time.sleep(5.0)
    cpu = (cpu_seconds(pid) - cpu0) / 5.0
    after = (proc_status(pid, "Threads"), fds(pid), proc_status(pid, "VmRSS"))
    return {
        "threads": (before[0], after[0]),
        "fds": (before[1], after[1]),
        "rss_mb": (before[2] / 1024, after[2] / 1024),
        "cpu": cpu,
    }


def per_match(targets: list[Target], rounds: int) -> dict[str, dict[str, float]]:
    identifier = full_identifier()
    timings: dict[str, list[float]] = {t.name: [] for t in targets}
    matches: dict[str, int] = {}
    first: dict[str, float] = {}
    scus = {t.name: connect(t, calling="PERMATCH") for t in targets}
    for index in range(rounds + 1):
        for target in targets[index % len(targets) :] + targets[: index % len(targets)]:
            scu = scus[target.name]
            started = time.perf_counter()
            scu.send_find(identifier)
            count, status, ended = read_answer(scu)
            if status != 0:
                raise RuntimeError(f"{target.name}: final status 0x{status:04X}")
            matches[target.name] = count
            if index == 0:
                first[target.name] = ended - started
            else:
                timings[target.name].append(ended - started)
    for scu in scus.values():
        scu.release()
    return {
        name: {
            "matches": matches[name],
            "median_ms": 1000 * statistics.median(values),
            "us_per_match": 1e6 * statistics.median(values) / max(matches[name], 1),
            "first_ms": 1000 * first[name],
        }
        for name, values in timings.items()
    }


def tls_overhead(plain: Target, tls: Target, context: ssl.SSLContext, rounds: int) -> dict:
    identifier = full_identifier(Modality="CT", ScheduledStationAETitle="CT01")
    out = {}
    for name, target, kwargs in (("plain", plain, {}), ("tls", tls, {"tls": context})):
        setups, queries, count = [], [], 0
        for _ in range(rounds):
            started = time.perf_counter()
            scu = connect(target, calling="TLSBENCH", **kwargs)
            setups.append(time.perf_counter() - started)
            started = time.perf_counter()
            scu.send_find(identifier)
            count, _status, ended = read_answer(scu)
            queries.append(ended - started)
            scu.release()
        out[name] = {
            "setup_ms": 1000 * statistics.median(setups),
            "query_ms": 1000 * statistics.median(queries),
            "matches": count,
        }
    return out


# --------------------------------------------------------------------------- servers


def start_all(args: argparse.Namespace, workdir: Path, rb: object) -> tuple[list[Target], Target]:
    url = f"sqlite:///{workdir / 'mwl.db'}"
    load_items.load(url, args.n, recreate=True, peers_dir=args.peers_dir, progress=False)
    pki = workdir / "pki"
    ca = make_ca(pki, "Bench CA")
    server = issue(ca, pki, "mwl-bench", server=True)
    args.client_ca = ca
    args.client_cert = issue(ca, pki, "BENCHSCU", server=False)
    mwl = benchlib.start_mwl(
        url,
        workdir / "mwl",
        life_s=int(args.budget_s),
        extra_env={
            "MWL_DICOM_TLS_PORT": "0",
            "MWL_DICOM_TLS_CERT": str(server.cert),
            "MWL_DICOM_TLS_KEY": str(server.key),
            "MWL_DICOM_TLS_CA": str(ca.cert),
        },
    )
    tls_port = 0
    for line in mwl.stdout_lines:
        if " over TLS listening on " in line:
            tls_port = int(line.rsplit(":", 1)[1])
    print(f"mwl serve: `{mwl.shown_command()}`", flush=True)
    targets = [Target("mwl", mwl.dicom_port, mwl.ae_title, mwl.pid, mwl.stop)]
    tls = Target("mwl (TLS)", tls_port, mwl.ae_title, mwl.pid, lambda: None)
    root = workdir / "peers"
    rb.gen_worklist.generate(args.n, root, rb.WL_AET, 20261121, "20261121", 30, "ISO_IR 192")
    for kind in args.peers:
        if kind == "wlmscpfs":
            srv = rb.start_wlmscpfs(root, workdir, int(args.budget_s), True)
        else:
            srv = rb.start_orthanc(root / rb.WL_AET, workdir, int(args.budget_s), True)
        if not rb.wait_ready(srv):
            rb.stop_server(srv)
            raise RuntimeError(f"{kind} did not answer C-ECHO")
        pid = benchlib._child_pid(srv.proc.pid) or srv.proc.pid
        targets.append(Target(kind, srv.port, srv.called_aet, pid, lambda s=srv: rb.stop_server(s)))
    return targets, tls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500, help="items (all match the query)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--cancels", type=int, default=20)
    parser.add_argument("--aborts", type=int, default=60)
    parser.add_argument("--peers", nargs="*", default=["wlmscpfs", "orthanc"])
    parser.add_argument("--peers-dir", type=Path)
    parser.add_argument("--budget-s", type=float, default=1800)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    benchlib.exit_on_signals("network_layer.py")
    rb = benchlib.peer_bench_module(args.peers_dir)
    benchlib.put_dcmtk_first_on_path("/usr/bin", rb.CLIENT_ENV)
    rb.set_client_nodelay(True)
    workdir = Path(tempfile.mkdtemp(prefix="mwl-net-bench-"))
    benchlib.print_header("DICOM network layer: mwl serve, wlmscpfs, Orthanc")
    targets: list[Target] = []
    try:
        targets, tls = start_all(args, workdir, rb)
        mwl = targets[0]
        print(f"\n## 1. Idle: {args.idle} silent associations, {args.idle_seconds:g} s\n")
        rows = []
        for target in targets:
            established, share = idle_cpu(target, args.idle, args.idle_seconds)
            rows.append((target.name, established, f"{100 * share:.1f} %"))
        print(benchlib.markdown_table(["server", "established", "CPU (one core)"], rows))

        print(f"\n## 2. {args.concurrent} associations at once against mwl (one is the C-ECHO)\n")
        result = concurrent_echo(mwl, args.concurrent, 10.0)
        print(
            benchlib.markdown_table(
                ["established", "C-ECHO beside them p50", "max", "mwl CPU"],
                [
                    (
                        result["established"],
                        f"{result['echo_ms']:.1f} ms",
                        f"{result['echo_max_ms']:.1f} ms",
                        f"{100 * result['cpu']:.1f} %",
                    )
                ],
            )
        )

        print(f"\n## 3. C-CANCEL after the first of {args.n} matches, {args.cancels} times\n")
        rows = []
        for target in targets:
            try:
                c = cancels(target, args.cancels)
            except (AbortedError, OSError) as exc:
                rows.append((target.name, f"failed: {exc}", "", "", "", ""))
                continue
            rows.append(
                (
                    target.name,
                    f"{c['cancel_ok']}/{c['times']}",
                    ", ".join(c["statuses"]),
                    f"{c['cancel_p50_ms']:.1f} ms",
                    f"{c['cancel_max_ms']:.1f} ms",
                    f"{c['after_p50']:.0f}",
                )
            )
        print(
            benchlib.markdown_table(
                [
                    "server",
                    "ended 0xFE00",
                    "final statuses",
                    "cancel to final p50",
                    "max",
                    "matches after the cancel (p50)",
                ],
                rows,
            )
        )

        print(f"\n## 4. {args.aborts} A-ABORTs and resets mid-answer (mwl)\n")
        a = aborts(mwl, args.aborts)
        print(
            benchlib.markdown_table(
                [
                    "threads before/after",
                    "fds before/after",
                    "RSS before/after",
                    "CPU 10-15 s after",
                ],
                [
                    (
                        f"{a['threads'][0]} / {a['threads'][1]}",
                        f"{a['fds'][0]} / {a['fds'][1]}",
                        f"{a['rss_mb'][0]:.0f} / {a['rss_mb'][1]:.0f} MiB",
                        f"{100 * a['cpu']:.1f} %",
                    )
                ],
            )
        )

        print(f"\n## 5. One answer of every item, every key ({args.rounds} rounds)\n")
        answer = per_match(targets, args.rounds)
        base = answer["mwl"]["median_ms"]
        print(
            benchlib.markdown_table(
                ["server", "matches", "first (cold) ms", "median ms", "us per match", "x mwl"],
                [
                    (
                        name,
                        r["matches"],
                        f"{r['first_ms']:.1f}",
                        f"{r['median_ms']:.1f}",
                        f"{r['us_per_match']:.1f}",
                        f"{r['median_ms'] / base:.2f}",
                    )
                    for name, r in answer.items()
                ],
            )
        )

        print(f"\n## 6. TLS against plain (mwl, medians of {args.rounds})\n")
        context = ssl.create_default_context(cafile=args.client_ca.cert)
        context.load_cert_chain(args.client_cert.cert, args.client_cert.key)
        t = tls_overhead(mwl, tls, context, args.rounds)
        print(
            benchlib.markdown_table(
                ["", "connect + associate", "query", "matches"],
                [
                    (k, f"{v['setup_ms']:.2f} ms", f"{v['query_ms']:.2f} ms", v["matches"])
                    for k, v in t.items()
                ],
            )
        )
    finally:
        for target in targets:
            benchlib.cleanup(f"stop {target.name}", target.stop)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    raise SystemExit(main())
