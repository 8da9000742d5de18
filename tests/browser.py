"""Shared pieces of the browser tests: serve an app as mwl serve does, drive Debian's Chromium.

Usage::

    with serving(app) as base, chromium() as browser:
        page = browser.new_page()
        log_in(page, base, "alice", PASSWORD)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.peers import CHROMIUM
from web.server import WebServer

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[1]
# Screenshots of every browser test land here (ignored by git).
ARTIFACTS = REPO / "tests" / "artifacts"


@contextmanager
def serving(app: Any, tls: Any = None) -> Iterator[str]:
    """Serve ``app`` as ``mwl serve`` does on a loopback ephemeral port; HTTPS with ``tls``.

    ``tls`` is a :class:`mwl.tls.ReloadingContext`; the base URL says the scheme.
    """
    server = WebServer(app, "127.0.0.1", 0, threads=2, tls=tls)
    server.start()
    try:
        yield f"{server.scheme}://127.0.0.1:{server.address[1]}"
    finally:
        server.shutdown()


@contextmanager
def chromium(*extra_args: str) -> Iterator[Any]:
    """A headless Debian Chromium through Playwright; skips when it is not installed."""
    if CHROMIUM.missing:
        pytest.skip(CHROMIUM.missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args]
        )
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Any, base: str, username: str, password: str) -> None:
    """Log in through the form and wait until the day list shows."""
    from playwright.sync_api import expect

    page.goto(f"{base}/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as ``tests/artifacts/<name>.png``; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    return shot


# axe-core from tests/node (npm ci --prefix tests/node), injected into the page.
AXE = REPO / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """axe-core's violations of the current page with these impacts, as readable lines.

    Skips the test when axe-core is not installed (``npm ci --prefix tests/node``).
    """
    if not AXE.is_file():
        pytest.skip(f"{AXE} missing: run npm ci --prefix tests/node")
    # Evaluated, not added as a <script>: the page's CSP (script-src 'none') rightly
    # refuses scripts, and the test must not loosen it.
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(f"() => {{ {AXE.read_text(encoding='utf-8')}\n}}")
    found: list[str] = page.evaluate(
        """async (impacts) => {
            const result = await axe.run(document, {resultTypes: ["violations"]});
            return result.violations
                .filter(v => impacts.includes(v.impact))
                .map(v => `${v.impact} ${v.id}: `
                    + v.nodes.map(n => n.target.join(" ")).join(", "));
        }""",
        list(impacts),
    )
    return found
