"""How fast a singleton lease fails over on PostgreSQL: after a hang (SIGSTOP) and a kill -9.

Two holder processes (this script with ``--hold``) compete for one lease, as two
brokers' RIS senders do: each tries every ``--poll`` seconds and prints ``run`` while
it holds the lease (the job's step), ``standby`` while it does not. A round:

1. A holds, B stands by; A is stopped (SIGSTOP: its kernel still answers TCP
   keepalives, only ``lease_lifetime_seconds`` ends its session) → seconds until B runs;
2. A is continued (SIGCONT) → it must say ``standby`` and never ``run`` while B holds;
3. B is killed (-9: the kernel closes its connection, the server frees the lock at
   once) → seconds until A runs.

Prints the median of each over ``--rounds`` rounds, with the settings used::

    python bench/lease_failover.py --url postgresql://postgres@127.0.0.1:5432/test

The lease is only an advisory lock of the database: no table is read or written.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = os.environ.get("MWL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def hold(url: str, name: str, lifetime: float, keepalive: float, poll: float) -> None:
    """The holder process: try the lease every ``poll`` seconds, say what happened."""
    sys.path.insert(0, str(REPO_ROOT))
    from sqlalchemy.exc import SQLAlchemyError

    from mwl.store.engine import make_engine
    from mwl.store.leases import SingletonLease

    engine = make_engine(url)
    lease = SingletonLease(engine, name, keepalive_seconds=keepalive, lifetime_seconds=lifetime)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            try:
                # As the RIS sender: acquire (or renew) per round, confirm before the work.
                running = lease.acquire() and lease.confirm()
            except SQLAlchemyError as exc:
                print(f"error {time.monotonic():.3f} {type(exc).__name__}", flush=True)
                running = False
            print(f"{'run' if running else 'standby'} {time.monotonic():.3f}", flush=True)
            time.sleep(poll)
    finally:
        lease.release()
        engine.dispose()


@dataclass
class Holder:
    """A running holder process and the lines it printed, as (word, monotonic time)."""

    process: subprocess.Popen[str]
    lines: queue.Queue[tuple[str, float]] = field(default_factory=queue.Queue)
    seen: list[tuple[str, float]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def next_state(self, timeout: float) -> tuple[str, float]:
        word, at = self.lines.get(timeout=timeout)
        self.seen.append((word, at))
        return word, at

    def wait_for(self, word: str, timeout: float) -> float:
        """The time of the next line saying ``word``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {word!r} within {timeout}s")
            try:
                found, at = self.next_state(left)
            except queue.Empty:
                continue
            if found == word:
                return at

    def drain(self) -> list[tuple[str, float]]:
        out = []
        while True:
            try:
                out.append(self.next_state(0))
            except queue.Empty:
                return out

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)
        if self.reader is not None:
            self.reader.join(timeout=10)  # it ends at the pipe's end
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_holder(url: str, name: str, lifetime: float, keepalive: float, poll: float) -> Holder:
    command = [sys.executable, str(Path(__file__).resolve()), "--hold", "--url", url]
    command += ["--name", name, "--lifetime", str(lifetime), "--keepalive", str(keepalive)]
    command += ["--poll", str(poll)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    holder = Holder(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            parts = line.split()
            if len(parts) >= 2:
                holder.lines.put((parts[0], float(parts[1])))

    holder.reader = threading.Thread(target=pump, daemon=True)
    holder.reader.start()
    return holder


@dataclass
class Round:
    hang_s: float
    kill_s: float
    ran_after_wake: bool


def one_round(url: str, lifetime: float, keepalive: float, poll: float) -> Round:
    """One hang and one kill -9 (the steps in the module's description)."""
    name = f"bench-{uuid.uuid4().hex[:12]}"
    wait = lifetime + 30
    first = start_holder(url, name, lifetime, keepalive, poll)
    second: Holder | None = None
    try:
        first.wait_for("run", 60)
        second = start_holder(url, name, lifetime, keepalive, poll)
        second.wait_for("standby", 60)
        first.drain()
        os.kill(first.process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        took_over = second.wait_for("run", wait)
        hang_s = took_over - stopped
        second.drain()
        os.kill(first.process.pid, signal.SIGCONT)
        woke = time.monotonic()
        first.wait_for("standby", 30)
        # B still holds: A must not have run since it woke (its lines until now).
        time.sleep(2 * poll + 0.5)
        ran_after_wake = any(w == "run" and at >= woke for w, at in first.seen + first.drain())
        os.kill(second.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        kill_s = first.wait_for("run", wait) - killed
        return Round(hang_s, kill_s, ran_after_wake)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL URL (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lifetime", type=float, default=30.0, help="lease_lifetime_seconds")
    parser.add_argument("--keepalive", type=float, default=10.0, help="lease_keepalive_seconds")
    parser.add_argument(
        "--poll", type=float, default=2.0, help="seconds between tries (ris_poll_interval_seconds)"
    )
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold(args.url, args.name, args.lifetime, args.keepalive, args.poll)
        return
    print(f"# lease failover: {' '.join(sys.argv)}")
    print(
        f"lease_lifetime_seconds={args.lifetime:g} lease_keepalive_seconds={args.keepalive:g} "
        f"poll={args.poll:g}s rounds={args.rounds}"
    )
    rounds = []
    for number in range(1, args.rounds + 1):
        found = one_round(args.url, args.lifetime, args.keepalive, args.poll)
        rounds.append(found)
        print(
            f"round {number}: after SIGSTOP {found.hang_s:.2f} s, after kill -9 "
            f"{found.kill_s:.2f} s, woken holder ran while the other held: "
            f"{'YES' if found.ran_after_wake else 'no'}",
            flush=True,
        )
    print(
        f"median: after SIGSTOP {statistics.median(r.hang_s for r in rounds):.2f} s, "
        f"after kill -9 {statistics.median(r.kill_s for r in rounds):.2f} s; "
        f"concurrent runs after wake-up: {sum(r.ran_after_wake for r in rounds)}"
    )


if __name__ == "__main__":
    main()
