"""/healthz: open to monitoring, says whether the database answers, shows no data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from mwl.config import Settings
from web import create_app


def test_healthz_is_ok_without_login(client, add_order):
    add_order("ACC-H", dt.datetime(2026, 11, 21, 9), patient_name="Private^Person")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}
    assert b"Private" not in response.data


def test_healthz_is_503_when_the_database_does_not_answer(tmp_path: Path):
    # A SQLite file in a directory that does not exist cannot be opened.
    url = f"sqlite:///{tmp_path / 'missing' / 'mwl.db'}"
    app = create_app(Settings(database_url=url, web_secret_key="k"), config={"TESTING": True})
    try:
        response = app.test_client().get("/healthz")
        assert response.status_code == 503
        assert response.get_json() == {"status": "unavailable", "database": "unavailable"}
    finally:
        engine = app.extensions["mwl"].owned_engine
        assert engine is not None  # no factory given: the app built its own engine
        engine.dispose()


def test_app_builds_its_own_engine_from_settings(settings):
    app = create_app(settings, config={"TESTING": True})
    try:
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        app.extensions["mwl"].owned_engine.dispose()


def test_unexpected_errors_show_no_traceback(logged_in, monkeypatch, caplog):
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("Secret^Patient internal detail")

    monkeypatch.setattr("web.worklist.day_page", broken)
    response = logged_in.get("/")
    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert "Something went wrong on the server" in page
    assert "Secret" not in page and "Traceback" not in page
    assert "unexpected error while serving a web request" in caplog.text


def test_stylesheet_is_served(client):
    response = client.get("/static/style.css")
    assert response.status_code == 200
    assert "table" in response.get_data(as_text=True)
    response.close()


def test_each_request_returns_its_connection(logged_in, engine, add_order):
    add_order("ACC-P", dt.datetime(2026, 11, 21, 9))
    for path in ("/?date=2026-11-21", "/messages", "/scanners", "/healthz"):
        assert logged_in.get(path).status_code == 200
        assert engine.pool.checkedout() == 0, path


def test_without_a_configured_key_each_process_signs_with_its_own(settings, reader_factory):
    unset = settings.replace(web_secret_key="")
    first = create_app(unset, reader_factory).config["SECRET_KEY"]
    second = create_app(unset, reader_factory).config["SECRET_KEY"]
    assert first != second and len(first) >= 32
    assert create_app(settings, reader_factory).config["SECRET_KEY"] == "test-secret-key"
