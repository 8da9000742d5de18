"""LDAP login against a real slapd (Debian's), started by the test on a loopback port.

The tree is synthetic: carol in mwl-editors, frank in mwl-editors and mwl-admins,
dave in no group.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user, find_user
from mwl.config import Settings
from tests.peers import LDAPADD, SLAPD
from web import create_app

pytestmark = [SLAPD.required, LDAPADD.required]

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "test-only-root-pw"
PASSWORDS = {"carol": "carol-test-pw-1", "frank": "frank-test-pw-2", "dave": "dave-test-pw-3"}
EDITORS = f"cn=mwl-editors,ou=groups,{SUFFIX}"
ADMINS = f"cn=mwl-admins,ou=groups,{SUFFIX}"

SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {folder}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {folder}/db
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""


def _person(uid: str) -> str:
    return (
        f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
        f"cn: {uid.title()} Test\nsn: Test\nuserPassword: {PASSWORDS[uid]}\n"
    )


TREE = "\n".join(
    [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
        "dc: example\no: Example\n",
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
        _person("carol"),
        _person("frank"),
        _person("dave"),
        f"dn: {EDITORS}\nobjectClass: groupOfNames\ncn: mwl-editors\n"
        f"member: uid=carol,ou=people,{SUFFIX}\nmember: uid=frank,ou=people,{SUFFIX}\n",
        f"dn: {ADMINS}\nobjectClass: groupOfNames\ncn: mwl-admins\n"
        f"member: uid=frank,ou=people,{SUFFIX}\n",
    ]
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """slapd as our own process, with the test tree loaded by ldapadd; yields its URL."""
    folder = tmp_path_factory.mktemp("slapd")
    (folder / "db").mkdir()
    conf = folder / "slapd.conf"
    conf.write_text(
        SLAPD_CONF.format(folder=folder, suffix=SUFFIX, root_dn=ROOT_DN, root_pw=ROOT_PW)
    )
    url = f"ldap://127.0.0.1:{_free_port()}"
    # -d keeps it in the foreground, so it is this process we stop.
    process = subprocess.Popen(
        [str(SLAPD), "-d", "0", "-f", str(conf), "-h", f"{url}/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(url, process)
        (folder / "tree.ldif").write_text(TREE)
        subprocess.run(
            [
                str(LDAPADD),
                "-x",
                "-H",
                url,
                "-D",
                ROOT_DN,
                "-w",
                ROOT_PW,
                "-f",
                str(folder / "tree.ldif"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def _wait_listening(url: str, process: subprocess.Popen[bytes]) -> None:
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"slapd exited: {process.stderr.read() if process.stderr else ''!r}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("slapd did not listen within 15 s")


def _ldap_settings(settings: Settings, url: str) -> Settings:
    return settings.replace(
        ldap_url=url,
        ldap_user_dn_template=f"uid={{username}},ou=people,{SUFFIX}",
        ldap_group_search_base=f"ou=groups,{SUFFIX}",
        ldap_group_role_map=((EDITORS, "editor"), (ADMINS, "admin")),
        web_login_failures_per_user=2,
        ldap_timeout_seconds=5.0,
    )


@pytest.fixture
def ldap_app(slapd: str, settings: Settings, reader_factory: sessionmaker[Session]) -> Flask:
    return create_app(
        _ldap_settings(settings, slapd),
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
    )


def _login(app: Flask, username: str, password: str):  # type: ignore[no-untyped-def]
    client = app.test_client()
    return client, client.post("/login", data={"username": username, "password": password})


def test_bind_and_group_to_role(ldap_app, session_factory):
    client, response = _login(ldap_app, "carol", PASSWORDS["carol"])
    assert response.status_code == 302
    page = client.get("/")
    assert page.status_code == 200, (response.location, page.location)
    assert client.get("/admin").status_code == 403  # editor, not admin
    _, response = _login(ldap_app, "Frank", PASSWORDS["frank"])
    assert response.status_code == 302
    with session_factory() as session:
        carol, frank = find_user(session, "carol"), find_user(session, "frank")
        assert carol is not None and (carol.role, carol.external_source) == ("editor", "ldap")
        # In both groups: the higher role wins.
        assert frank is not None and frank.role == "admin"


def test_user_in_no_group_is_refused(ldap_app, session_factory):
    client, response = _login(ldap_app, "dave", PASSWORDS["dave"])
    assert response.status_code == 403
    assert b"no role on this broker" in response.data
    assert client.get("/").status_code == 302  # still sent to the login page
    with session_factory() as session:
        assert find_user(session, "dave") is None


def test_wrong_password_is_refused_and_counted_by_the_login_limits(ldap_app):
    for _ in range(2):
        _, response = _login(ldap_app, "carol", "not-her-password")
        assert response.status_code == 200
        assert b"Unknown user name or wrong password." in response.data
    # Two failures are free (web_login_failures_per_user=2): now even the right
    # password waits, as for a local account.
    _, response = _login(ldap_app, "carol", PASSWORDS["carol"])
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1


def test_empty_password_is_no_anonymous_bind(ldap_app):
    # The form refuses it already; the directory is never asked with an empty password.
    _, response = _login(ldap_app, "carol", "")
    assert response.status_code == 200
    assert b"Log in" in response.data


def test_a_local_account_is_checked_here_only(ldap_app, session_factory):
    with session_factory.begin() as session:
        add_user(session, "carol", "correct horse battery staple", "viewer")
    # Her directory password does not open the local account of the same name.
    _, response = _login(ldap_app, "carol", PASSWORDS["carol"])
    assert response.status_code == 200
    _, response = _login(ldap_app, "carol", "correct horse battery staple")
    assert response.status_code == 302
    with session_factory() as session:
        carol = find_user(session, "carol")
        assert carol is not None and (carol.role, carol.external_source) == ("viewer", None)


def test_directory_down_is_a_clear_error(settings, reader_factory):
    app = create_app(
        _ldap_settings(settings, f"ldap://127.0.0.1:{_free_port()}"),
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
    )
    _, response = _login(app, "carol", PASSWORDS["carol"])
    assert response.status_code == 503
    assert b"user directory cannot be reached" in response.data
