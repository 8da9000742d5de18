"""Shared fixtures: settings, and a migrated database on SQLite and on PostgreSQL.

Database tests take the ``database_url`` fixture (directly or through ``engine`` /
``session_factory``) and so run once per backend: a database migrated to the newest
revision and holding no rows, copied from one migrated per test process
(tests/databases.py says how). Tests of the migrations and of a first start take
``empty_database_url`` instead: no tables at all. PostgreSQL is the server at
``MWL_TEST_POSTGRES_URL`` (default: 127.0.0.1:5432, user postgres, database test);
where none answers, those runs skip with the reason. PostgreSQL tests use a schema
of this process's own (``mwl_test_<pid>``), dropped at the end, so they touch neither
other tables of that database nor another test run's.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from jinja2.bccache import Bucket, BytecodeCache
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.store.engine import make_engine, make_session_factory
from tests.databases import drop_kept_databases, fresh_database_url, migrated_database_url

# scrypt at the production cost (N=2**15) takes 0.1-0.6 s per hash on the shared
# 2-core machine, and hundreds of tests create users and log in. In-process tests
# hash at N=2**10 instead; tests marked ``production_password_cost`` (and every
# `mwl` subprocess) use the real cost, and tests/web/test_users.py checks it.
CHEAP_SCRYPT_N = 2**10

# Fixtures that start a server on a loopback port (in this process or as a
# subprocess): a test that takes one, directly or through another fixture, is ``e2e``.
SERVER_FIXTURES = frozenset(
    {
        "broker",  # tests/e2e: `mwl serve` as a subprocess
        "fuzz_server",
        "hl7_server",
        "orthanc",
        "own_postgres",  # tests/e2e/test_readiness.py: a PostgreSQL of the test's own
        "profiled_scp",
        "ris",  # tests/mpps: the test RIS, an MLLP listener
        "scp",
        "server",
        "servers",
        "slapd",  # tests/web/test_ldap_login.py: a real LDAP directory
        "sso_broker",  # tests/web/test_oidc_login.py: the page and an OIDC provider
        "start_broker",
        "start_cluster",  # tests/cluster: several `mwl serve` and HAProxy
        "shared_cluster",
        "syslog",  # tests/audit: rsyslogd as the ATNA audit repository
        "tls_orthanc",
        "tls_scp",
    }
)
# Marked tests the default run leaves out (pyproject.toml's addopts); they count as
# slow too, so that a hand-written ``-m`` for the fast subset leaves them out as well.
LONG_RUNS = ("soak", "cluster", "sweep")
# Long real-peer suites the default run leaves to the sweep (CI runs it after the
# default run, which must stay under six minutes on two cores): file -> which of its
# tests, "*" for all, "postgresql" for the PostgreSQL variants (their SQLite variants
# stay in the default run, so each path still runs there once).
SWEEP_SUITES: dict[str, str] = {
    # Floods and descriptor exhaustion against a real broker: stress, not behaviour.
    "tests/hl7/test_exhaustion.py": "*",
    # Each test runs the mwl command several times (a Python start each).
    "tests/core/test_cli_users.py": "postgresql",
    # Orthanc as a modality for every key case.
    "tests/dicom/test_orthanc.py": "postgresql",
    # A Prometheus server scraping a scripted run.
    "tests/e2e/test_monitoring.py": "postgresql",
    # rsyslogd stopped and started under HL7 load.
    "tests/audit/test_atna.py::test_nothing_is_lost_while_the_repository_is_down": "postgresql",
}
# The tests allowed to listen on a socket: everything else is the fast subset's.
SERVER_MARKERS = ("e2e", "browser")


def _in_sweep(item: pytest.Item) -> bool:
    path = item.nodeid.split("::")[0]
    function = item.nodeid.split("[")[0]
    which = SWEEP_SUITES.get(function) or SWEEP_SUITES.get(path)
    if which is None:
        return False
    callspec = getattr(item, "callspec", None)
    return which == "*" or (
        callspec is not None and "postgresql" in callspec.id.split("-") and which == "postgresql"
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``e2e`` every test that takes a server fixture; ``slow`` every long run.

    A browser test's PostgreSQL variant is a ``sweep``: the page, not the database, is
    what a browser test is about, and its database side runs on PostgreSQL in the
    default run through the page's own tests; CI runs the sweep after that.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (
            item.get_closest_marker("browser")
            and callspec is not None
            and "postgresql" in callspec.id.split("-")
        ):
            item.add_marker(pytest.mark.sweep)
        if _in_sweep(item):
            item.add_marker(pytest.mark.sweep)
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if any(item.get_closest_marker(name) for name in LONG_RUNS):
            item.add_marker(pytest.mark.slow)
    _long_files_first(items)


def _long_files_first(items: list[pytest.Item]) -> None:
    """Files with browser tests, then with servers or slow ones, then the rest (order kept).

    pytest-xdist (``--dist loadfile``) hands files out in this order: the long ones
    start first and the many short ones fill in around them, instead of a browser
    file starting last and keeping one core busy alone at the end.
    """

    def weight(item: pytest.Item) -> int:
        if item.get_closest_marker("browser"):
            return 0
        return 1 if item.get_closest_marker("e2e") or item.get_closest_marker("slow") else 2

    by_file: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        by_file[path] = min(by_file.get(path, 2), weight(item))
    position = {path: n for n, path in enumerate(by_file)}
    items.sort(
        key=lambda item: (by_file[item.nodeid.split("::")[0]], position[item.nodeid.split("::")[0]])
    )


@pytest.fixture(autouse=True)
def listening_only_in_e2e_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Fail a test that opens a listening socket without being marked ``e2e``.

    The fast subset (``-m "not e2e and not browser and not slow"``) is the tests that
    start no server; this holds the markers to that instead of trusting them. Servers
    started before the test (module fixtures) are caught by :data:`SERVER_FIXTURES`.
    """
    if any(request.node.get_closest_marker(name) for name in SERVER_MARKERS):
        yield
        return
    opened: list[object] = []
    listen = socket.socket.listen

    def recording_listen(sock: socket.socket, *args: int) -> None:
        opened.append(sock.getsockname())
        listen(sock, *args)

    monkeypatch.setattr(socket.socket, "listen", recording_listen)
    yield
    if opened:
        pytest.fail(
            f"listened on {opened[0]} without the e2e marker: mark the test e2e, or add "
            "its server fixture to SERVER_FIXTURES in tests/conftest.py",
            pytrace=False,
        )


@pytest.fixture(autouse=True, scope="session")
def pydicom_reads_without_checks() -> Iterator[None]:
    """pydicom's reading checks off, as the worklist SCP sets them in ``mwl serve``.

    The SCP judges values from the wire by its own rules; pydicom's checks would warn
    (and quote the values). In-process SCPs turn them off for the whole process, so
    the tests do so from the start: no test then depends on which ran first.
    """
    from pydicom import config

    before = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    yield
    config.settings.reading_validation_mode = before


class _CompiledTemplates(BytecodeCache):
    """Compiled Jinja templates kept in memory, for every app of the test process.

    ``mwl serve`` compiles each template once; the tests build a new app per test, and
    compiling the templates again was a fifth of the web tests' time. Jinja checks
    each template's source against the cached code's checksum, so an edited template
    is compiled afresh; the key holds the environment's extensions, so an app set up
    otherwise never gets another's code.
    """

    def __init__(self) -> None:
        self._code: dict[tuple[str, tuple[str, ...]], bytes] = {}

    @staticmethod
    def _key(bucket: Bucket) -> tuple[str, tuple[str, ...]]:
        return bucket.key, tuple(sorted(bucket.environment.extensions))

    def load_bytecode(self, bucket: Bucket) -> None:
        if (code := self._code.get(self._key(bucket))) is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[self._key(bucket)] = bucket.bytecode_to_string()


@pytest.fixture(autouse=True, scope="session")
def templates_compiled_once() -> Iterator[None]:
    """Every Flask app of this process shares :class:`_CompiledTemplates`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            Flask, "jinja_options", {**Flask.jinja_options, "bytecode_cache": _CompiledTemplates()}
        )
        yield


@pytest.fixture(autouse=True)
def cheap_password_hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash passwords cheaply unless the test is marked ``production_password_cost``."""
    if request.node.get_closest_marker("production_password_cost") is None:
        monkeypatch.setattr("mwl.admin.users._SCRYPT_N", CHEAP_SCRYPT_N)
        monkeypatch.setattr("mwl.admin.users._dummy_hash", None)


@pytest.fixture(autouse=True, scope="session")
def kept_databases_dropped() -> Iterator[None]:
    """The migrated databases this process kept for reuse are dropped at its end."""
    yield
    drop_kept_databases()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database migrated to head, without rows; once on SQLite, once on PostgreSQL."""
    yield from migrated_database_url(request.param, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database without any tables, for tests of the migrations and of a first start."""
    yield from fresh_database_url(request.param, tmp_path)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the migrated test database."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A writer session factory on the migrated database."""
    return make_session_factory(engine, writer=True)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for in-process servers: loopback, ephemeral ports, the test database."""
    return Settings(
        database_url=database_url,
        bind_address="127.0.0.1",
        hl7_port=0,
        dicom_port=0,
        web_port=0,
        web_secret_key="test-secret-key",
    )
