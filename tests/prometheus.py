"""A real Prometheus (Debian's) for tests: temporary config and storage, loopback, stopped after."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.peers import PROMETHEUS

READY_TIMEOUT_S = 60


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (a race with other processes is unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    base: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, expression: str) -> list[dict[str, object]]:
        """The instant vector of ``expression`` (``/api/v1/query``)."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        """The single value of ``expression``, or None when it has no sample."""
        result = self.query(expression)
        if not result:
            return None
        assert len(result) == 1, result
        sample = result[0]["value"]
        assert isinstance(sample, list)
        return float(sample[1])

    def wait_for(self, expression: str, expected: float, timeout: float = 60) -> float | None:
        """Poll until ``expression`` is ``expected`` (or the time is up); the last value."""
        deadline = time.monotonic() + timeout
        found = self.value(expression)
        while found != expected and time.monotonic() < deadline:
            time.sleep(0.5)
            found = self.value(expression)
        return found


@contextmanager
def running_prometheus(directory: Path, target: str, token: str = "") -> Iterator[Prometheus]:
    """Prometheus scraping ``http://target/metrics`` every second, with ``token`` as bearer."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = f"\n    authorization:\n      type: Bearer\n      credentials: {token}" if token else ""
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: mwl\n    metrics_path: /metrics{auth}\n"
        f"    static_configs:\n      - targets: ['{target}']\n",
        encoding="utf-8",
    )
    port = free_port()
    log = directory / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"{server.base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready:\n" + log.read_text()
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
