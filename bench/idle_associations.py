"""CPU that `mwl serve` spends on open associations that do nothing (not a test).

Before the broker had its own association layer (mwl/dicom/net), pynetdicom
served each association with two threads that poll (sleeping 1 ms between checks),
so a silent association cost CPU: 12 % of a core for one, a whole core from 25
(docs/performance.md, third round). Each association is now one thread asleep in
``poll`` on its socket. This script measures what they cost: starts ``mwl serve``
(empty SQLite database, loopback, ephemeral ports), opens ``--associations``
associations from a client process of its own
(pynetdicom, Modality Worklist FIND context) for each count in turn, lets them sit
idle, and prints the server's CPU (user + system, from /proc) over ``--seconds``,
and the client's own, as a share of one core.

Example::

    python bench/idle_associations.py --associations 0 1 10 50 --seconds 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import benchlib


def _hold(port: int, ae_title: str, count: int, seconds: float, out: multiprocessing.Queue) -> None:
    """In a child process: open ``count`` associations, idle, report own CPU, release."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    ae = AE(ae_title="IDLE")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assocs = [ae.associate(benchlib.HOST, port, ae_title=ae_title) for _ in range(count)]
    try:
        established = sum(a.is_established for a in assocs)
        out.put(("open", established))
        time.sleep(1.0)  # let the servers' threads settle
        out.put(("start", None))
        before = os.times()
        time.sleep(seconds)
        after = os.times()
        out.put(("client", (after.user + after.system) - (before.user + before.system)))
    finally:
        for assoc in assocs:
            if assoc.is_established:
                assoc.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, nargs="+", default=[0, 1, 10, 50])
    parser.add_argument("--seconds", type=float, default=5.0, help="idle time measured")
    args = parser.parse_args(argv)
    benchlib.exit_on_signals("idle_associations.py")
    benchlib.print_header("Idle associations: CPU of mwl serve")
    workdir = Path(tempfile.mkdtemp(prefix="mwl-idle-bench-"))
    mwl = benchlib.start_mwl(f"sqlite:///{workdir / 'mwl.db'}", workdir / "mwl", life_s=600)
    rows = []
    try:
        print(f"server: `{mwl.shown_command()}`")
        for count in args.associations:
            out: multiprocessing.Queue = multiprocessing.Queue()
            client = multiprocessing.Process(
                target=_hold, args=(mwl.dicom_port, mwl.ae_title, count, args.seconds, out)
            )
            client.start()
            try:
                _, established = out.get(timeout=60)
                out.get(timeout=30)  # "start"
                server_before = mwl.cpu_seconds()
                _, client_cpu = out.get(timeout=args.seconds + 30)
                server_cpu = mwl.cpu_seconds() - server_before
            finally:
                client.join(timeout=30)
                if client.is_alive():
                    client.terminate()
                    client.join(timeout=10)
            rows.append(
                (
                    count,
                    established,
                    f"{100 * server_cpu / args.seconds:.0f} %",
                    f"{100 * client_cpu / args.seconds:.0f} %",
                )
            )
    finally:
        benchlib.cleanup("stop mwl serve", mwl.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        benchlib.markdown_table(
            [
                "open associations",
                "established",
                f"mwl serve CPU over {args.seconds:g} s idle (of one core)",
                "client CPU (pynetdicom, same idle associations)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
