"""The HL7 listener's edges: what silent connections cost, and what TLS costs (not a test).

Starts ``mwl serve`` (empty SQLite database, loopback, ephemeral ports, MLLP over
TLS with a throw-away certificate made by ``openssl``) and measures:

1. ``--connections`` silent MLLP connections (default 1,000), spread over
   ``--addresses`` source addresses in 127.0.0.0/8 (default 50), with
   ``hl7_max_connections`` raised for the run: the server's CPU while they sit
   (median of ``--windows`` windows of ``--seconds``, as a share of one core) and
   its resident memory before and after (targets: at most 2 % of a core and 64 MiB).
2. HL7 messages per second on one connection, plain and over TLS, in alternating
   rounds of ``--messages`` messages (a new connection, and handshake, per round);
   the medians (target: TLS within 15 % of plain). Both sides set TCP_NODELAY.

Example::

    python bench/hl7_edges.py --connections 1000 --addresses 50 --rounds 5 --messages 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
from hl7_ingest import MessageFactory, MllpConnection


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed EC P-256 server certificate for 127.0.0.1 (synthetic name)."""
    key, cert = folder / "hl7.key", folder / "hl7.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/O=mwl bench/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class TlsMllpConnection(MllpConnection):
    """:class:`MllpConnection` over TLS, the server verified against its own certificate."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port)
        self.sock = context.wrap_socket(self.sock, server_hostname=host)


def open_silent(port: int, count: int, addresses: int) -> list[socket.socket]:
    """``count`` connections to the HL7 port, round-robin over 127.0.0.2…"""
    socks = []
    for i in range(count):
        source = f"127.0.0.{2 + i % addresses}"
        sock = socket.create_connection(
            (benchlib.HOST, port), timeout=30, source_address=(source, 0)
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (a closed one reads EOF at once)."""
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def round_rate(
    make_connection: Callable[[], MllpConnection], messages: MessageFactory, count: int
) -> tuple[float, int]:
    """(messages per second, AA answers) of ``count`` messages on a new connection."""
    started = time.perf_counter()
    connection = make_connection()
    accepted = 0
    try:
        for _ in range(count):
            _, code = connection.exchange(messages.next())
            accepted += code == "AA"
    finally:
        connection.close()
    return count / (time.perf_counter() - started), accepted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--addresses", type=int, default=50, help="source addresses (≤ 250)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one CPU window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (plain, TLS)")
    parser.add_argument("--messages", type=int, default=200, help="messages per round")
    args = parser.parse_args(argv)
    if not 1 <= args.addresses <= 250:
        parser.error("--addresses must be between 1 and 250")
    benchlib.exit_on_signals("hl7_edges.py")
    benchlib.print_header("HL7 listener: silent connections and TLS")
    workdir = Path(tempfile.mkdtemp(prefix="mwl-hl7-edges-"))
    cert, key = make_certificate(workdir)
    per_address = -(-args.connections // args.addresses)
    env = {
        "MWL_HL7_MAX_CONNECTIONS": str(max(args.connections + 10, 200)),
        "MWL_HL7_MAX_CONNECTIONS_PER_ADDRESS": str(max(per_address + 1, 20)),
        "MWL_HL7_TLS_PORT": str(benchlib.free_port()),
        "MWL_HL7_TLS_CERT": str(cert),
        "MWL_HL7_TLS_KEY": str(key),
        "MWL_RETENTION_INTERVAL_SECONDS": "0",
    }
    mwl = benchlib.start_mwl(
        f"sqlite:///{workdir / 'mwl.db'}", workdir / "mwl", life_s=1800, extra_env=env
    )
    tls_port = int(env["MWL_HL7_TLS_PORT"])
    context = ssl.create_default_context(cafile=cert)
    messages = MessageFactory()
    silent: list[socket.socket] = []
    try:
        print(f"server: `{mwl.shown_command()}`")
        # Warm up both paths (imports, first database writes) before measuring.
        round_rate(lambda: MllpConnection(benchlib.HOST, mwl.hl7_port), messages, 20)
        round_rate(lambda: TlsMllpConnection(benchlib.HOST, tls_port, context), messages, 20)
        time.sleep(1.0)
        rss_before = mwl.vm_rss_mb() or 0.0
        threads_before = len(os.listdir(f"/proc/{mwl.pid}/task"))
        silent = open_silent(mwl.hl7_port, args.connections, args.addresses)
        time.sleep(2.0)  # every connection accepted and its thread asleep in recv
        alive = still_open(silent)
        shares = []
        for _ in range(args.windows):
            before = mwl.cpu_seconds()
            time.sleep(args.seconds)
            shares.append(100 * (mwl.cpu_seconds() - before) / args.seconds)
        rss_after = mwl.vm_rss_mb() or 0.0
        threads_after = len(os.listdir(f"/proc/{mwl.pid}/task"))
        windows = ", ".join(f"{share:.2f}" for share in shares)
        print()
        print(
            benchlib.markdown_table(
                [
                    "silent connections",
                    "source addresses",
                    "still open",
                    "server threads",
                    f"server CPU, median of {args.windows} × {args.seconds:g} s (of one core)",
                    "RSS before MB",
                    "RSS after MB",
                    "extra RSS MB",
                ],
                [
                    (
                        args.connections,
                        args.addresses,
                        alive,
                        f"{threads_before} → {threads_after}",
                        f"{statistics.median(shares):.2f} % ({windows})",
                        f"{rss_before:.1f}",
                        f"{rss_after:.1f}",
                        f"{rss_after - rss_before:.1f}",
                    )
                ],
            )
        )
        for sock in silent:
            sock.close()
        silent = []
        time.sleep(2.0)
        plain_rates, tls_rates, refused = [], [], 0
        for _ in range(args.rounds):
            rate, ok = round_rate(
                lambda: MllpConnection(benchlib.HOST, mwl.hl7_port), messages, args.messages
            )
            plain_rates.append(rate)
            refused += args.messages - ok
            rate, ok = round_rate(
                lambda: TlsMllpConnection(benchlib.HOST, tls_port, context), messages, args.messages
            )
            tls_rates.append(rate)
            refused += args.messages - ok
        plain, tls = statistics.median(plain_rates), statistics.median(tls_rates)
        print()
        print(
            benchlib.markdown_table(
                ["MLLP", "median msg/s", "rounds msg/s"],
                [
                    ("plain", f"{plain:.1f}", ", ".join(f"{r:.1f}" for r in plain_rates)),
                    ("TLS", f"{tls:.1f}", ", ".join(f"{r:.1f}" for r in tls_rates)),
                ],
            )
        )
        print(
            f"\nTLS / plain: {100 * tls / plain:.1f} % ({args.rounds} alternating rounds of "
            f"{args.messages} messages, one connection each); non-AA answers: {refused}"
        )
        print(f"load average at the end: {os.getloadavg()}")
    finally:
        for sock in silent:
            sock.close()
        benchlib.cleanup("stop mwl serve", mwl.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
