"""A stream of synthetic HL7 orders into a running broker, and what the worklist answers.

Used where ingest must go on while something else happens (a backup, a second node
migrating the schema): :class:`Feeder` sends one order after the other over one MLLP
connection and records each ACK code by order number.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from mwl.hl7.client import ack_summary, iter_acks
from tests import scu

TEMPLATE = Path(__file__).resolve().parents[1] / "samples" / "hl7" / "orm_o01_nw.hl7"


def accession(number: int) -> str:
    """The accession number of order ``number``."""
    return f"RUACC{number:06d}"


def order(number: int, day: dt.date) -> bytes:
    """A synthetic one-step CT order on ``day``, unique by ``number`` (MSH-10 ``RU<n>``)."""
    text = TEMPLATE.read_text(encoding="latin-1")
    for old, new in (
        ("MSG00001", f"RU{number:06d}"),
        ("PAT0001", f"RUPAT{number:06d}"),
        ("PLC0001", f"RUPLC{number:06d}"),
        ("FIL0001", f"RUFIL{number:06d}"),
        ("ACC0001", accession(number)),
        ("RP0001", f"RURP{number:06d}"),
        ("SPS0001", f"RUSPS{number:06d}"),
        ("20261121093000", f"{day:%Y%m%d}093000"),
    ):
        text = text.replace(old, new)
    # Without ZDS: the broker derives a Study Instance UID per order.
    lines = [line for line in text.splitlines() if line and not line.startswith("ZDS")]
    return "\r".join(lines).encode("latin-1") + b"\r"


def numbers(start: int = 0, step: int = 1) -> Iterator[int]:
    """start, start + step, ... (two feeders: even and odd)."""
    number = start
    while True:
        yield number
        number += step


@dataclass
class Feeder:
    """Sends orders to one MLLP port, one at a time, until :meth:`finish`."""

    port: int
    day: dt.date
    numbers: Iterator[int] = field(default_factory=numbers)
    acks: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def _payloads(self, sent: list[int]) -> Iterator[bytes]:
        while not self.stop.is_set():
            number = next(self.numbers)
            sent.append(number)
            yield order(number, self.day)

    def _run(self) -> None:
        sent: list[int] = []
        try:
            # iter_acks asks for the next payload only after the previous ACK.
            acks = iter_acks("127.0.0.1", self.port, self._payloads(sent))
            for index, ack in enumerate(acks):
                self.acks[sent[index]] = ack_summary(ack)[0]
        except OSError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def start(self) -> Feeder:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` orders are acknowledged (or an error, or the timeout)."""
        deadline = time.monotonic() + timeout
        while len(self.acks) < count and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acks) >= count, (len(self.acks), self.errors)

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def accepted(self) -> set[str]:
        """The accession numbers of the orders that got AA."""
        return {accession(n) for n, code in list(self.acks.items()) if code == "AA"}


def ct_accessions(dicom_port: int, day: dt.date, called_ae: str) -> set[str]:
    """The accession numbers a node answers for CT on ``day`` (pynetdicom as CT01)."""
    ds = Dataset()
    ds.AccessionNumber = ""
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledProcedureStepStartDate = f"{day:%Y%m%d}"
    ds.ScheduledProcedureStepSequence = [sps]
    matches, final = scu.c_find(dicom_port, ds, called_ae=called_ae)
    assert final == 0x0000, hex(final)
    return {str(m.AccessionNumber) for m in matches}
