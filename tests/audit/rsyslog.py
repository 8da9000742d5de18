"""rsyslogd as the ATNA audit repository: TLS (RFC 5425, mutual) and UDP (RFC 5426) inputs.

Runs Debian's /usr/sbin/rsyslogd in the foreground with its own configuration,
writing each received message's raw text (one line each) to a file. Loopback only.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from tests.certificates import Issued
from tests.peers import RSYSLOGD

SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).with_name("audit-message.xsd"))))
_BOM = "\ufeff"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Received:
    """One syslog message as rsyslog stored it: its RFC 5424 header fields and the XML."""

    header: list[str]
    xml: str

    @property
    def msgid(self) -> str:
        return self.header[5]

    def document(self) -> etree._Element:
        return etree.fromstring(self.xml.encode("utf-8"))

    def event_id(self) -> str:
        return str(self.document().find("EventIdentification/EventID").get("csd-code"))

    def event_types(self) -> list[str]:
        return [
            e.get("csd-code") for e in self.document().iterfind("EventIdentification/EventTypeCode")
        ]

    def action(self) -> str:
        return str(self.document().find("EventIdentification").get("EventActionCode"))


def parse_line(line: str) -> Received:
    # "<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG": SD is "-" in ours.
    parts = line.split(" ", 7)
    message = parts[7]
    return Received(parts[:7], message.removeprefix(_BOM))


@dataclass
class Rsyslog:
    """One rsyslogd; ``start``/``stop`` may be called again (same ports)."""

    folder: Path
    server: Issued
    ca: Issued
    tcp_port: int = field(default_factory=lambda: free_port(socket.SOCK_STREAM))
    udp_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "messages.log"

    def _config(self) -> Path:
        work = self.folder / "work"
        work.mkdir(exist_ok=True)
        conf = self.folder / "rsyslog.conf"
        conf.write_text(
            f"""
global(workDirectory="{work}"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{self.ca.cert}"
       defaultNetstreamDriverCertFile="{self.server.cert}"
       defaultNetstreamDriverKeyFile="{self.server.key}"
       maxMessageSize="256k")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{self.log}" template="raw" flushOnTXEnd="on" asyncWriting="off")
"""
        )
        return conf

    def start(self) -> None:
        assert self.process is None
        conf = self._config()
        with (self.folder / "rsyslogd.err").open("ab") as errors:
            self.process = subprocess.Popen(
                [str(RSYSLOGD), "-n", "-f", str(conf), "-i", str(self.folder / "rsyslogd.pid")],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "rsyslogd.err").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("rsyslogd did not listen in 15 s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def messages(self) -> list[Received]:
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [parse_line(line) for line in lines if line.strip()]

    def wait_for(self, predicate, timeout: float = 30.0) -> list[Received]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if predicate(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)
