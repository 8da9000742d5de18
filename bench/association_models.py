"""Two ways to serve many mostly idle connections, measured side by side (not a test).

The broker's DICOM layer (mwl/dicom/net) had to choose between a thread per
association that sleeps in ``poll`` on its socket, and one asyncio event loop
for all sockets with the blocking work (the database query, encoding) in worker
threads. This script builds a minimal server of each kind with the same work per
request, in a child process of its own, and measures:

- the server's RSS and CPU with ``--connections`` idle connections open;
- the round trip of a small request on one more connection while they idle
  (median and p95 of ``--pings``);
- the server CPU to stream one answer of ``--responses`` messages of
  ``--response-bytes`` bytes, written in 64 KiB spans as the broker writes them:
  the threaded server writes from the thread that made the bytes; the asyncio one
  makes them in a worker thread (as the database work would run there) and hands
  each span to the loop.

Example::

    python bench/association_models.py --connections 500 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import select
import socket
import statistics
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import benchlib

HOST = "127.0.0.1"
SPAN = 64 * 1024


def _answer(responses: int, size: int) -> list[bytes]:
    return [struct.pack(">L", size) + bytes(size) for _ in range(responses)]


def _request_kind(data: bytes) -> bytes:
    return data[:1]


def _quiet() -> None:
    # The child is ended with SIGTERM: its shutdown noise is not a result.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


def thread_server(port_out: Any, responses: int, size: int) -> None:
    """A thread per connection, each asleep in poll until its socket has bytes."""
    _quiet()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(1024)
    port_out.put(listener.getsockname()[1])

    def serve(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while True:
            poller.poll(60_000)
            data = sock.recv(65536)
            if not data:
                return
            if _request_kind(data) == b"S":
                span = bytearray()
                for message in _answer(responses, size):
                    span += message
                    if len(span) >= SPAN:
                        sock.sendall(span)
                        span.clear()
                sock.sendall(bytes(span) + b"END!")
            else:
                sock.sendall(b"pong")

    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


def asyncio_server(port_out: Any, responses: int, size: int) -> None:
    """One event loop for every connection; the answer is made in a worker thread."""
    _quiet()
    pool = ThreadPoolExecutor(max_workers=8)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = await reader.read(65536)
            if not data:
                writer.close()
                return
            if _request_kind(data) != b"S":
                writer.write(b"pong")
                await writer.drain()
                continue
            done = asyncio.Event()

            def produce(done: asyncio.Event = done) -> None:
                span = bytearray()
                for message in _answer(responses, size):
                    span += message
                    if len(span) >= SPAN:
                        chunk = bytes(span)
                        span.clear()
                        asyncio.run_coroutine_threadsafe(_write(writer, chunk), loop).result()
                asyncio.run_coroutine_threadsafe(
                    _write(writer, bytes(span) + b"END!"), loop
                ).result()
                loop.call_soon_threadsafe(done.set)

            pool.submit(produce)
            await done.wait()

    async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def main() -> None:
        server = await asyncio.start_server(serve, HOST, 0, backlog=1024)
        port_out.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _read_until(sock: socket.socket, end: bytes) -> int:
    total, tail = 0, b""
    while not tail.endswith(end):
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        total += len(data)
        tail = (tail + data)[-len(end) :]
    return total


def measure(name: str, target: Any, args: argparse.Namespace) -> list[object]:
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(
        target=target, args=(ports, args.responses, args.response_bytes), daemon=True
    )
    server.start()
    try:
        port = ports.get(timeout=30)
        base_rss = _rss_mb(server.pid)
        idle = [socket.create_connection((HOST, port)) for _ in range(args.connections)]
        time.sleep(1.0)
        cpu0 = _cpu(server.pid)
        time.sleep(args.seconds)
        idle_cpu = (_cpu(server.pid) - cpu0) / args.seconds
        rss = _rss_mb(server.pid)
        probe = socket.create_connection((HOST, port))
        probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(args.pings):
            started = time.perf_counter()
            probe.sendall(b"P")
            _read_until(probe, b"pong")
            rtts.append(time.perf_counter() - started)
        # CPU time is counted in clock ticks (10 ms): summed over all the streams.
        cpu0 = _cpu(server.pid)
        for _ in range(args.streams):
            probe.sendall(b"S")
            _read_until(probe, b"END!")
        stream_cpu = (_cpu(server.pid) - cpu0) / args.streams
        for sock in [*idle, probe]:
            sock.close()
        per_conn_kb = (rss - base_rss) * 1024 / max(args.connections, 1)
        return [
            name,
            args.connections,
            f"{100 * idle_cpu:.1f} %",
            f"{rss:.0f} MB",
            f"{per_conn_kb:.0f} kB",
            f"{1000 * statistics.median(rtts):.3f} ms",
            f"{1000 * benchlib.percentile(rtts, 95):.3f} ms",
            f"{1e6 * stream_cpu / args.responses:.2f} us",
        ]
    finally:
        server.terminate()
        server.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--responses", type=int, default=1500)
    parser.add_argument("--response-bytes", type=int, default=600)
    args = parser.parse_args(argv)
    benchlib.exit_on_signals("association_models.py")
    benchlib.print_header("Thread per association vs one asyncio loop")
    rows = [
        measure("thread per connection, poll", thread_server, args),
        measure("asyncio loop + worker threads", asyncio_server, args),
    ]
    print(
        benchlib.markdown_table(
            [
                "model",
                "idle connections",
                f"server CPU idle ({args.seconds:g} s)",
                "server RSS",
                "RSS per connection",
                "ping p50",
                "ping p95",
                f"server CPU per message ({args.responses} x {args.response_bytes} B)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
