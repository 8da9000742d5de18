"""OpenID Connect login in Chromium through a real provider (oidc-provider on Node).

The provider (tests/node/oidc_provider.mjs) serves HTTPS with a test CA that the
broker is told to trust (oidc_ca); its accounts are synthetic: alice in
mwl-admins, erin in mwl-editors, bob without any group claim.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user, find_user
from mwl.config import Settings
from mwl.store.models import WebSession
from tests.browser import REPO, chromium, screenshot, serving
from tests.certificates import issue, make_ca
from tests.peers import NODE
from web import create_app

pytestmark = [pytest.mark.browser, NODE.required]

SCRIPT = REPO / "tests" / "node" / "oidc_provider.mjs"
CLIENT_ID = "mwl-test"
CLIENT_SECRET = "test-only-client-secret"


@dataclass
class SsoBroker:
    base: str
    issuer: str


@contextmanager
def oidc_provider(folder: Path, base: str) -> Iterator[str]:
    """Run the provider for a broker at ``base``; yields its issuer URL."""
    if not (REPO / "tests" / "node" / "node_modules" / "oidc-provider").is_dir():
        pytest.skip("oidc-provider is not installed (npm ci --prefix tests/node)")
    ca = make_ca(folder, "oidc-ca")
    leaf = issue(ca, folder, "oidc", server=True)
    config = folder / "provider.json"
    config.write_text(
        json.dumps(
            {
                "cert": str(leaf.cert),
                "key": str(leaf.key),
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uri": f"{base}/login/oidc/callback",
                "post_logout_redirect_uri": f"{base}/login",
            }
        )
    )
    process = subprocess.Popen(
        [str(NODE), str(SCRIPT), str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded: the process prints it or exits
        assert line.startswith("ready "), f"provider did not start: {line!r}"
        (folder / "ca.pem").write_bytes(ca.cert.read_bytes())
        yield line.split()[1]
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def sso_broker(
    tmp_path: Path, settings: Settings, reader_factory: sessionmaker[Session]
) -> Iterator[SsoBroker]:
    """The web page on a loopback port, logging in through the provider."""
    # The broker's port must be known to the provider (redirect URI) and the
    # provider's to the broker (issuer): the server starts first, the app after.
    inner: list[Any] = []

    def dispatch(environ: Any, start_response: Any) -> Any:
        return inner[0](environ, start_response)

    with serving(dispatch) as base, oidc_provider(tmp_path, base) as issuer:
        sso_settings = settings.replace(
            oidc_issuer=issuer,
            oidc_client_id=CLIENT_ID,
            oidc_client_secret=CLIENT_SECRET,
            oidc_scopes="openid profile groups",
            oidc_role_map=(("mwl-admins", "admin"), ("mwl-editors", "editor")),
            oidc_ca=str(tmp_path / "ca.pem"),
        )
        inner.append(create_app(sso_settings, reader_factory, config={"TESTING": True}))
        yield SsoBroker(base, issuer)


def _provider_login(page: Any, base: str, login: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_role("link", name="Log in with single sign-on").click()
    # oidc-provider's development login form, then its consent form.
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any-password")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()


def _sessions(session_factory: sessionmaker[Session], user_key: int) -> int:
    with session_factory() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(WebSession).where(WebSession.user_key == user_key)
            )
            or 0
        )


def test_login_with_role_from_the_claim_and_rp_initiated_logout(sso_broker, session_factory):
    from playwright.sync_api import expect

    base = sso_broker.base
    with chromium() as browser:
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        _provider_login(page, base, "alice")
        expect(page).to_have_url(f"{base}/")
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        # mwl-admins -> admin: the admin pages are open to her.
        response = page.goto(f"{base}/admin")
        assert response is not None and response.status == 200
        screenshot(page, "oidc-admin")
        with session_factory() as session:
            alice = find_user(session, "alice")
            assert alice is not None
            assert (alice.role, alice.external_source) == ("admin", "oidc")
            key = alice.id
        assert _sessions(session_factory, key) == 1

        # Logout ends the local session, then the provider's (its confirmation form).
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(
            re.compile(re.escape(f"{sso_broker.issuer}/session/end?id_token_hint=")), timeout=10_000
        )
        assert _sessions(session_factory, key) == 0
        page.get_by_role("button", name="Yes, sign me out").click()
        expect(page).to_have_url(re.compile(re.escape(f"{base}/login?state=")))
        expect(page.get_by_role("button", name="Log in")).to_be_visible()
        # The provider's session is gone too: SSO asks for the login again.
        page.get_by_role("link", name="Log in with single sign-on").click()
        expect(page.locator("input[name=login]")).to_be_visible()
        context.close()


def test_editor_role_from_the_claim(sso_broker, session_factory):
    from playwright.sync_api import expect

    with chromium() as browser:
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        _provider_login(page, sso_broker.base, "erin")
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        response = page.goto(f"{sso_broker.base}/admin")
        assert response is not None and response.status == 403
        context.close()
    with session_factory() as session:
        erin = find_user(session, "erin")
        assert erin is not None and erin.role == "editor"


def test_user_without_the_group_is_refused(sso_broker, session_factory):
    from playwright.sync_api import expect

    with chromium() as browser:
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        _provider_login(page, sso_broker.base, "bob")
        expect(page.get_by_role("alert")).to_contain_text("no role on this broker")
        page.goto(f"{sso_broker.base}/")
        expect(page).to_have_url(f"{sso_broker.base}/login?next=%2F")
        context.close()
    with session_factory() as session:
        assert find_user(session, "bob") is None


def test_a_local_account_is_not_taken_over(sso_broker, session_factory):
    from playwright.sync_api import expect

    with session_factory.begin() as session:
        add_user(session, "alice", "correct horse battery staple", "viewer")
    with chromium() as browser:
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        _provider_login(page, sso_broker.base, "alice")
        expect(page.get_by_role("alert")).to_contain_text("Single sign-on failed")
        context.close()
    with session_factory() as session:
        alice = find_user(session, "alice")
        assert alice is not None and (alice.role, alice.external_source) == ("viewer", None)
