"""HTTPS on the web port against real peers: requests, openssl s_client, Chromium.

The server is the one ``mwl serve`` runs (web.server.WebServer on cheroot) with
certificates of a test CA (tests/certificates.py). These tests are about the
transport, so they run on SQLite; the sessions and login limits they touch are
tested on both databases in test_sessions.py and test_login_limits.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user, set_password
from mwl.config import Settings
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.migrate import upgrade
from mwl.tls import ReloadingContext, TlsFiles
from tests.browser import chromium, serving
from tests.certificates import Issued, issue, make_ca
from web import create_app

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
_CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    folder = tmp_path_factory.mktemp("webpki")
    ca = make_ca(folder, "Web Test CA")
    return {
        "ca": ca,
        "server": issue(ca, folder, "mwl-web", server=True),
        "renewed": issue(ca, folder, "mwl-web-renewed", server=True),
    }


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'mwl.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def writers(engine: Engine) -> sessionmaker[Session]:
    factory = make_session_factory(engine, writer=True)
    with factory.begin() as session:
        add_user(session, "alice", PASSWORD, "viewer")
    return factory


@pytest.fixture
def live_files(pki: dict[str, Issued], tmp_path: Path) -> TlsFiles:
    """The server's certificate copied where a test may replace it (renewal)."""
    cert, key = tmp_path / "web.crt", tmp_path / "web.key"
    shutil.copyfile(pki["server"].cert, cert)
    shutil.copyfile(pki["server"].key, key)
    return TlsFiles(cert, key)


def https_app(engine: Engine, files: TlsFiles, **changes: Any) -> Flask:
    settings = Settings(
        database_url=str(engine.url),
        web_tls_cert=str(files.cert),
        web_tls_key=str(files.key),
        **changes,
    )
    return create_app(settings, make_session_factory(engine), config={"TESTING": True})


@pytest.fixture
def https(engine: Engine, writers: sessionmaker[Session], live_files: TlsFiles) -> Iterator[str]:
    """The base URL of the app served over HTTPS."""
    tls = ReloadingContext(live_files, service="web")
    with serving(https_app(engine, live_files), tls=tls) as base:
        yield base


def trusting(ca: Issued, base: str = "") -> requests.Session:
    """A requests session that trusts the test CA only.

    It sends a Referer as browsers do: over HTTPS, Flask-WTF refuses a form posted
    without one from this site.
    """
    client = requests.Session()
    if base:
        client.headers["Referer"] = f"{base}/login"
    # Else REQUESTS_CA_BUNDLE in the environment overrides ``verify`` of the session.
    client.trust_env = False
    client.verify = str(ca.cert)
    return client


def csrf(html: str) -> str:
    found = _CSRF_INPUT.search(html)
    assert found, "the page has no csrf_token input"
    return found.group(1)


def log_in(client: requests.Session, base: str, username: str = "alice") -> requests.Response:
    form = client.get(f"{base}/login", timeout=10)
    return client.post(
        f"{base}/login",
        data={"username": username, "password": PASSWORD, "csrf_token": csrf(form.text)},
        allow_redirects=False,
        timeout=10,
    )


def test_requests_over_https_gets_hsts_and_a_secure_cookie(https, pki):
    client = trusting(pki["ca"], https)
    page = client.get(f"{https}/login", timeout=10)
    assert page.status_code == 200
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    response = log_in(client, https)
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("mwl_session=")
    assert "; Secure" in cookie and "HttpOnly" in cookie
    assert client.get(f"{https}/", timeout=10).status_code == 200


def test_plain_http_has_no_hsts_even_when_a_stranger_says_https(engine, writers):
    settings = Settings(database_url=str(engine.url))
    with serving(create_app(settings, make_session_factory(engine))) as base:
        assert base.startswith("http://")
        page = requests.get(f"{base}/login", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert page.status_code == 200
    assert "Strict-Transport-Security" not in page.headers
    assert "Secure" not in page.headers.get("Set-Cookie", "")


def test_a_trusted_proxy_is_believed_about_https_and_the_client_address(engine, writers):
    settings = Settings(
        database_url=str(engine.url),
        web_trusted_proxies=("127.0.0.0/8",),
        web_login_failures_per_address=1,
        web_login_first_delay_seconds=600,
        web_login_max_delay_seconds=600,
    )
    with serving(create_app(settings, make_session_factory(engine))) as base:
        proxied = requests.get(f"{base}/login", headers={"X-Forwarded-Proto": "https"}, timeout=10)
        assert proxied.headers["Strict-Transport-Security"] == "max-age=31536000"

        def attempt(client_address: str, password: str) -> int:
            client = requests.Session()
            headers = {"X-Forwarded-For": client_address}
            form = client.get(f"{base}/login", headers=headers, timeout=10)
            return client.post(
                f"{base}/login",
                data={"username": "alice", "password": password, "csrf_token": csrf(form.text)},
                headers=headers,
                allow_redirects=False,
                timeout=10,
            ).status_code

        # The limit counts the forwarded client address, not the proxy's.
        assert attempt("192.0.2.7", "wrong") == 200
        assert attempt("192.0.2.7", PASSWORD) == 429
        assert attempt("198.51.100.9", PASSWORD) == 302


def test_a_session_cookie_replayed_after_logout_is_refused(https, pki):
    client = trusting(pki["ca"], https)
    assert log_in(client, https).status_code == 302
    page = client.get(f"{https}/", timeout=10)
    assert page.status_code == 200
    copied = client.cookies.get("mwl_session")
    assert copied

    def replay() -> requests.Response:
        return trusting(pki["ca"]).get(
            f"{https}/",
            headers={"Cookie": f"mwl_session={copied}"},
            allow_redirects=False,
            timeout=10,
        )

    assert replay().status_code == 200  # a copy works while the session lives
    logout = client.post(
        f"{https}/logout", data={"csrf_token": csrf(page.text)}, allow_redirects=False, timeout=10
    )
    assert logout.status_code == 302
    refused = replay()
    assert refused.status_code == 302
    assert refused.headers["Location"].startswith("/login")


def _handshake(address: tuple[str, int], *args: str) -> subprocess.CompletedProcess[str]:
    host, port = address
    return subprocess.run(
        ["/usr/bin/openssl", "s_client", "-connect", f"{host}:{port}", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_tls_1_1_is_refused_and_1_2_and_1_3_are_accepted(https, pki):
    address = ("127.0.0.1", int(https.rsplit(":", 1)[1]))
    # OpenSSL's client refuses TLS 1.1 on its own unless told otherwise (SECLEVEL=0):
    # then it is the server that answers "protocol version".
    old = _handshake(address, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0
    assert "New, (NONE), Cipher is (NONE)" in old.stdout
    assert "alert protocol version" in old.stderr
    for version in ("TLSv1.2", "TLSv1.3"):
        done = _handshake(address, "-" + version.lower().replace("v", "").replace(".", "_"))
        assert done.returncode == 0, done.stderr
        assert f"New, {version}, Cipher is " in done.stdout
    # The server still answers after the refused handshake.
    assert trusting(pki["ca"]).get(f"{https}/healthz", timeout=10).status_code == 200


def _served_subject(base: str, ca: Path) -> str:
    port = int(base.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_a_renewed_certificate_is_served_without_a_restart(https, pki, live_files):
    assert "CN=mwl-web," in _served_subject(https, pki["ca"].cert)
    shutil.copyfile(pki["renewed"].key, live_files.key)
    shutil.copyfile(pki["renewed"].cert, live_files.cert)
    deadline = time.monotonic() + 10
    subject = ""
    while time.monotonic() < deadline:
        subject = _served_subject(https, pki["ca"].cert)
        if "CN=mwl-web-renewed" in subject:
            break
        time.sleep(0.3)
    assert "CN=mwl-web-renewed" in subject


def _spki_hash(cert: Path) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list takes: base64 SHA-256 of the SPKI."""
    public_key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.mark.browser
def test_chromium_over_https_loses_its_session_when_the_password_changes(https, pki, writers):
    from playwright.sync_api import expect

    from tests.browser import log_in as browser_log_in

    # Chromium trusts the test server's key only (no system-wide CA change).
    with chromium(f"--ignore-certificate-errors-spki-list={_spki_hash(pki['server'].cert)}") as b:
        first, second = b.new_context(), b.new_context()
        try:
            pages = [first.new_page(), second.new_page()]
            for page in pages:
                browser_log_in(page, https, "alice", PASSWORD)
            cookies = [c for c in first.cookies() if c["name"] == "mwl_session"]
            assert cookies and cookies[0]["secure"] and cookies[0]["httpOnly"]

            with writers.begin() as session:
                set_password(session, "alice", "another long passphrase")
            for page in pages:
                page.reload()
                expect(page.get_by_label("Password")).to_be_visible()
                assert page.url.startswith(f"{https}/login")
        finally:
            first.close()
            second.close()


def test_web_tls_and_proxy_settings_are_checked(pki, tmp_path):
    from mwl.config import load_settings
    from mwl.errors import SettingsError

    cert = str(pki["server"].cert)
    with pytest.raises(SettingsError, match="web_tls_key"):
        Settings(web_tls_cert=cert)
    with pytest.raises(SettingsError, match="web_tls_cert"):
        Settings(web_tls_cert=str(tmp_path / "missing.crt"), web_tls_key=cert)
    with pytest.raises(SettingsError, match="MWL_WEB_TRUSTED_PROXIES"):
        load_settings(environ={"MWL_WEB_TRUSTED_PROXIES": '["proxy.example"]'})
    with pytest.raises(SettingsError, match="web_session_idle_minutes"):
        Settings(web_session_idle_minutes=0)
    loaded = load_settings(
        environ={
            "MWL_WEB_TRUSTED_PROXIES": '["10.0.0.5", "192.0.2.0/24"]',
            "MWL_WEB_SESSION_IDLE_MINUTES": "15",
            "MWL_WEB_SESSION_LIFETIME_HOURS": "8",
        }
    )
    assert loaded.web_trusted_proxies == ("10.0.0.5/32", "192.0.2.0/24")
    assert (loaded.web_session_idle_minutes, loaded.web_session_lifetime_hours) == (15, 8)


def test_mwl_serve_serves_https_when_the_certificate_is_set(pki, tmp_path):
    from tests.serve import broker_env, start_broker

    env = broker_env(
        f"sqlite:///{tmp_path / 'serve.db'}",
        MWL_WEB_TLS_CERT=str(pki["server"].cert),
        MWL_WEB_TLS_KEY=str(pki["server"].key),
    )
    broker = start_broker(env, tmp_path)
    try:
        base = f"https://127.0.0.1:{broker.web_port}"
        assert f"web page on {base}/" in broker.output
        assert any("web TLS certificate loaded: CN=mwl-web" in line for line in broker.output)
        page = trusting(pki["ca"]).get(f"{base}/login", timeout=10)
        assert page.status_code == 200
        assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{broker.web_port}/login", timeout=10)
    finally:
        assert broker.stop() == 0


def _waits_behind_silent_clients(base: str, client: requests.Session) -> float:
    """Seconds a request takes while three connections to ``base`` say nothing."""
    port = int(base.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        time.sleep(0.5)  # accepted by now
        start = time.monotonic()
        page = client.get(f"{base}/healthz", timeout=10)
        elapsed = time.monotonic() - start
    finally:
        for sock in silent:
            sock.close()
    assert page.status_code == 200
    return elapsed


def test_clients_that_connect_and_say_nothing_hold_up_nobody(https, pki, engine, writers):
    # Three silent connections against two worker threads (tests.browser.serving):
    # cheroot as it comes would give each a worker until its 10 s timeout (and shake
    # hands on the accepting thread), so every other client would wait.
    assert _waits_behind_silent_clients(https, trusting(pki["ca"])) < 5
    settings = Settings(database_url=str(engine.url))
    with serving(create_app(settings, make_session_factory(engine))) as base:
        assert _waits_behind_silent_clients(base, requests.Session()) < 5
