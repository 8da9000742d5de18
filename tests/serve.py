"""A real ``mwl serve`` process for tests (loopback, ephemeral ports) and a web client."""

from __future__ import annotations

import http.cookiejar
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

READY_TIMEOUT_S = 60
ADMIN_PASSWORD = "correct horse battery staple"
AE_TITLE = "MWLTEST"
_LISTENING = {
    "hl7": re.compile(r"HL7 MLLP listening on [\d.]+:(\d+)"),
    "dicom": re.compile(r"DICOM worklist SCP \S+ listening on [\d.]+:(\d+)"),
    "web": re.compile(r"web page on https?://[\d.]+:(\d+)/"),
}


@dataclass
class Broker:
    """A running ``mwl serve``, where its services listen, and everything it printed."""

    process: subprocess.Popen[str]
    hl7_port: int
    dicom_port: int
    web_port: int
    ae_title: str = AE_TITLE
    output: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait, and return the exit code (kills it if it does not stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def broker_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test broker: loopback, ephemeral ports, ``database_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWL_")}
    env.update(
        MWL_DATABASE_URL=database_url,
        MWL_BIND_ADDRESS="127.0.0.1",
        MWL_HL7_PORT="0",
        MWL_DICOM_PORT="0",
        MWL_WEB_PORT="0",
        MWL_DICOM_AE_TITLE=AE_TITLE,
        MWL_WEB_SECRET_KEY="e2e-secret",
    )
    env.update(extra)
    return env


def run_mwl(
    args: list[str], env: dict[str, str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run one ``mwl`` command to its end."""
    return subprocess.run(
        [sys.executable, "-m", "mwl.cli", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def start_broker(env: dict[str, str], cwd: Path) -> Broker:
    """Start ``mwl serve`` and return once it says it is ready (or fail the test)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mwl.cli", "serve"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    ports: dict[str, int] = {}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "mwl is ready" not in output and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        output.append(line)
        for service, pattern in _LISTENING.items():
            if match := pattern.match(line):
                ports[service] = int(match[1])
    if "mwl is ready" not in output:
        process.kill()
        process.wait(timeout=10)
        pytest.fail("mwl serve did not become ready:\n" + "\n".join(output))

    def keep_reading() -> None:
        while (item := lines.get()) is not None:
            output.append(item)

    threading.Thread(target=keep_reading, daemon=True).start()
    return Broker(process, ports["hl7"], ports["dicom"], ports["web"], output=output)


class WebClient:
    """A browser-less web client with cookies, for the admin page."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def get(self, path: str) -> tuple[int, str, str]:
        try:
            with self.opener.open(self.base + path, timeout=30) as response:
                return response.status, response.geturl(), response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.geturl(), exc.read().decode()

    def login(self, username: str, password: str) -> tuple[int, str, str]:
        _, _, page = self.get("/login")
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
        data = {"username": username, "password": password}
        if token:
            data["csrf_token"] = token[1]
        request = urllib.request.Request(
            self.base + "/login", data=urllib.parse.urlencode(data).encode(), method="POST"
        )
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.geturl(), response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.geturl(), exc.read().decode()
