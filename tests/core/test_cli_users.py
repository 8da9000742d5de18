"""``mwl user`` and ``mwl token`` as an operator runs them: subprocesses on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest

from mwl.admin.tokens import authenticate_token, list_tokens
from mwl.admin.users import add_user, authenticate, list_users
from mwl.store.engine import make_engine, make_session_factory
from tests.serve import broker_env, run_mwl

# Each command is a fresh interpreter (about two seconds): not for the fast subset.
pytestmark = pytest.mark.slow


def _ok(args: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> str:
    result = run_mwl(args, env, cwd, stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _fails(args: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> str:
    result = run_mwl(args, env, cwd, stdin)
    assert result.returncode == 1, result.stdout + result.stderr
    # One clear line, no traceback.
    assert result.stderr.startswith("mwl: ") and len(result.stderr.strip().splitlines()) == 1
    return result.stderr


def _rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.strip().splitlines()[1:]]


def _add_user(database_url: str, name: str, password: str, role: str = "viewer") -> None:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine, writer=True).begin() as session:
            add_user(session, name, password, role)
    finally:
        engine.dispose()


# Each command is a fresh interpreter (about two seconds), so each test runs few.


def test_user_passwd_role_list_and_remove(database_url: str, tmp_path: Path):
    env = broker_env(database_url)
    _ok(["user", "add", "Zed", "--role", "editor"], env, tmp_path, "the first pass phrase\n")
    _add_user(database_url, "amy", "her own pass phrase")

    assert "password of zed changed" in _ok(
        ["user", "passwd", "ZED"], env, tmp_path, "the second pass phrase\n"
    )
    assert "zed now has role admin" in _ok(["user", "role", "zed", "admin"], env, tmp_path)
    listed = _ok(["user", "list"], env, tmp_path)
    assert listed.splitlines()[0].split() == ["NAME", "ROLE", "CREATED"]
    assert [row[:2] for row in _rows(listed)] == [["amy", "viewer"], ["zed", "admin"]]
    assert all(len(row) == 4 for row in _rows(listed))  # created: date and time
    assert "user amy removed" in _ok(["user", "remove", "Amy"], env, tmp_path)

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            assert [u.username for u in list_users(session)] == ["zed"]
            assert authenticate(session, "zed", "the second pass phrase") is not None
            assert authenticate(session, "zed", "the first pass phrase") is None
    finally:
        engine.dispose()


def test_user_commands_refuse_bad_input_with_one_line(database_url: str, tmp_path: Path):
    env = broker_env(database_url)
    _add_user(database_url, "amy", "her own pass phrase")
    assert "no user 'bob'" in _fails(["user", "passwd", "bob"], env, tmp_path)
    assert "must not be empty" in _fails(["user", "passwd", "amy"], env, tmp_path, "\n")
    # Nothing changed: amy keeps her role and her password.
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            (amy,) = list_users(session)
            assert amy.role == "viewer"
            assert authenticate(session, "amy", "her own pass phrase") is not None
    finally:
        engine.dispose()


def test_token_add_list_and_revoke(database_url: str, tmp_path: Path):
    env = broker_env(database_url)
    _add_user(database_url, "ris", "the import pass phrase", "editor")
    added = run_mwl(["token", "add", "RIS", "--name", "import"], env, tmp_path)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("mwl_") and "\n" not in token  # the token alone on stdout
    assert "only once" in added.stderr

    listed = _ok(["token", "list"], env, tmp_path)
    assert listed.splitlines()[0].split() == ["ID", "USER", "NAME", "CREATED", "LAST", "USED"]
    (row,) = _rows(listed)
    assert row[1:3] == ["ris", "import"] and row[-1] == "never"
    assert token not in listed

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine, writer=True).begin() as session:
            user = authenticate_token(session, token)
            assert user is not None and user.username == "ris"
        assert f"token {row[0]} of ris revoked" in _ok(["token", "revoke", row[0]], env, tmp_path)
        with make_session_factory(engine, writer=True).begin() as session:
            assert authenticate_token(session, token) is None
            assert list_tokens(session) == []
        assert "no token" in _fails(["token", "revoke", row[0]], env, tmp_path)
        with make_session_factory(engine)() as session:
            assert list_tokens(session) == []
    finally:
        engine.dispose()


def test_an_unknown_role_is_a_usage_error(tmp_path: Path):
    # Refused by the argument parser, before any database is opened.
    env = broker_env(f"sqlite:///{tmp_path / 'never-created.db'}")
    result = run_mwl(["user", "role", "amy", "root"], env, tmp_path)
    assert result.returncode == 2 and "invalid choice: 'root'" in result.stderr
    assert not (tmp_path / "never-created.db").exists()


def test_weak_passwords_are_refused_by_user_add_and_passwd(database_url: str, tmp_path: Path):
    env = broker_env(database_url)
    # The three the issue found accepted for an admin, then the user's own name.
    assert "shorter than 15" in _fails(
        ["user", "add", "root", "--role", "admin"], env, tmp_path, "a\n"
    )
    assert "shorter than 15" in _fails(
        ["user", "add", "root", "--role", "admin"], env, tmp_path, " \n"
    )
    assert "shorter than 15" in _fails(
        ["user", "add", "root", "--role", "admin"], env, tmp_path, "password\n"
    )
    assert "common passwords" in _fails(
        ["user", "add", "root", "--role", "admin"], env, tmp_path, "1Q2W3E4R5T6Y7U8I9O0P\n"
    )
    assert "user name" in _fails(
        ["user", "add", "root", "--role", "admin"], env, tmp_path, "I am Root, and proud of it\n"
    )
    _ok(["user", "add", "root", "--role", "admin"], env, tmp_path, "the first pass phrase\n")
    assert "shorter than 15" in _fails(["user", "passwd", "root"], env, tmp_path, "password\n")

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            assert [u.username for u in list_users(session)] == ["root"]
            assert authenticate(session, "root", "the first pass phrase") is not None
            assert authenticate(session, "root", "password") is None
    finally:
        engine.dispose()
