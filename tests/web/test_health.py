"""/metrics, /health and /ready: no login, restricted to networks and (metrics) a token."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings, load_settings
from mwl.errors import SettingsError
from mwl.operations import metrics
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import OutboxMessage, utcnow
from web import create_app

REQUIRED = (
    "mwl_hl7_messages",
    "mwl_dicom_cfind",
    "mwl_dicom_associations_open",
    "mwl_outbox_pending",
)
OUTSIDE = {"REMOTE_ADDR": "203.0.113.7"}


def _app(settings: Settings, readers: sessionmaker[Session] | None = None, **kw: object) -> Flask:
    return create_app(settings, readers, config={"TESTING": True}, **kw)  # type: ignore[arg-type]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def watched(engine: Engine, reader_factory: sessionmaker[Session]) -> sessionmaker[Session]:
    metrics.watch_database(engine, reader_factory)
    return reader_factory


def test_metrics_are_served_in_the_exposition_format(settings, watched):
    metrics.hl7_answered("ORM^O01", "AA", 0.003)
    response = _app(settings, watched).test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    families = {f.name for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert set(REQUIRED) <= families
    samples = _samples(response.get_data(as_text=True))
    assert samples[("mwl_hl7_messages_total", (("outcome", "AA"), ("type", "ORM^O01")))] >= 1
    assert samples[("mwl_database_up", ())] == 1


def test_the_outbox_depth_and_age_come_from_the_database(settings, watched, session_factory):
    client = _app(settings, watched).test_client()
    before = _samples(client.get("/metrics").get_data(as_text=True))
    assert before[("mwl_outbox_pending", ())] == 0
    assert before[("mwl_outbox_oldest_pending_age_seconds", ())] == 0
    with session_factory.begin() as session:
        ten_minutes_ago = utcnow() - dt.timedelta(minutes=10)
        session.add(OutboxMessage(order_key="1.2.3", payload="{}", created_at=ten_minutes_ago))
    after = _samples(client.get("/metrics").get_data(as_text=True))
    assert after[("mwl_outbox_pending", ())] == 1
    assert 590 <= after[("mwl_outbox_oldest_pending_age_seconds", ())] <= 3600


def test_a_database_down_is_a_metric_not_a_failed_scrape(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'missing' / 'mwl.db'}"
    settings = Settings(database_url=url, web_secret_key="k")
    engine = make_engine(url)
    try:
        readers = make_session_factory(engine)
        metrics.watch_database(engine, readers)
        client = _app(settings, readers).test_client()
        errors_before = _samples(client.get("/metrics").get_data(as_text=True))
        response = client.get("/metrics")
        assert response.status_code == 200
        samples = _samples(response.get_data(as_text=True))
        assert samples[("mwl_database_up", ())] == 0
        assert ("mwl_outbox_pending", ()) not in samples
        key = ("mwl_database_errors_total", (("error", "OperationalError"),))
        assert samples[key] > errors_before.get(key, 0)
    finally:
        engine.dispose()


def test_metrics_want_the_bearer_token_when_one_is_set(settings, reader_factory):
    client = _app(settings.replace(metrics_token="s3cret-token"), reader_factory).test_client()
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code == (
        401
    )
    good = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert good.status_code == 200
    assert b"mwl_dicom_associations_open" in good.data
    # The probes carry no token: a balancer must not need the secret.
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/health", "/ready"])
def test_clients_outside_the_allowed_networks_are_refused(settings, reader_factory, path):
    client = _app(settings, reader_factory).test_client()
    assert client.get(path, environ_base=OUTSIDE).status_code == 403
    assert client.get(path).status_code == 200  # from 127.0.0.1, in the default networks
    opened = settings.replace(metrics_allowed_networks=("203.0.113.0/24",))
    other = _app(opened, reader_factory).test_client()
    assert other.get(path, environ_base=OUTSIDE).status_code == 200
    assert other.get(path).status_code == 403


def test_the_networks_setting_is_checked():
    with pytest.raises(SettingsError, match="MWL_METRICS_ALLOWED_NETWORKS"):
        load_settings(environ={"MWL_METRICS_ALLOWED_NETWORKS": '["not-a-network"]'})
    loaded = load_settings(environ={"MWL_METRICS_ALLOWED_NETWORKS": '["10.1.0.0/16"]'})
    assert loaded.metrics_allowed_networks == ("10.1.0.0/16",)
    assert "s3cret" not in repr(Settings(metrics_token="s3cret"))
    assert Settings(metrics_token="s3cret").redacted()["metrics_token"] == "(set)"


def test_metrics_switched_off_answer_404_and_the_probes_stay(settings, reader_factory):
    client = _app(settings.replace(metrics_enabled=False), reader_factory).test_client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_recording_switched_off_records_nothing():
    before = metrics.HL7_MESSAGES.labels("ADT^A08", "AR")._value.get()
    metrics.configure(enabled=False)
    try:
        metrics.hl7_answered("ADT^A08", "AR", 0.1)
    finally:
        metrics.configure(enabled=True)
    assert metrics.HL7_MESSAGES.labels("ADT^A08", "AR")._value.get() == before
    metrics.hl7_answered("ADT^A08", "AR", 0.1)
    assert metrics.HL7_MESSAGES.labels("ADT^A08", "AR")._value.get() == before + 1


def test_health_names_each_listener(settings, reader_factory):
    bound = {"hl7": True, "dicom": True}
    client = _app(settings, reader_factory, listener_status=lambda: dict(bound)).test_client()
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "listeners": {"hl7": "ok", "dicom": "ok"},
        "database": "ok",
    }
    bound["dicom"] = False
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "listeners": {"hl7": "ok", "dicom": "down"},
        "database": "ok",
    }


def test_ready_when_the_database_answers_and_is_migrated(settings, reader_factory):
    response = _app(settings, reader_factory).test_client().get("/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["database"] == "ok"
    assert body["schema_revision"] == body["expected_schema_revision"] != ""


def test_unready_on_a_database_not_migrated(tmp_path: Path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'new.db'}", web_secret_key="k")
    app = _app(settings)
    try:
        response = app.test_client().get("/ready")
        assert response.status_code == 503
        body = response.get_json()
        assert body["status"] == "unready"
        assert body["database"] == "not migrated"
        assert body["schema_revision"] == ""
    finally:
        app.extensions["mwl"].owned_engine.dispose()


def test_unready_when_the_database_does_not_answer(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'missing' / 'mwl.db'}"
    app = _app(Settings(database_url=url, web_secret_key="k"))
    try:
        response = app.test_client().get("/ready")
        assert response.status_code == 503
        assert response.get_json()["database"] == "unavailable"
        assert response.get_json()["error"] == "OperationalError"
        assert str(tmp_path) not in response.get_data(as_text=True)
        # Up, but not ready: the balancer keeps the process, the orchestrator waits.
        health = app.test_client().get("/health")
        assert health.status_code == 200
        assert health.get_json()["database"] == "unavailable"
    finally:
        app.extensions["mwl"].owned_engine.dispose()


def test_wire_labels_are_bounded():
    assert metrics.bounded("CT01", {"CT01", "MR02"}) == "CT01"
    assert metrics.bounded("X" * 16, {"CT01"}) == metrics.OTHER
    assert metrics.cfind_status(0x0000) == "success"
    assert metrics.cfind_status(0xFE00) == "cancel"
    assert metrics.cfind_status(0xFF00) == "pending"
    assert metrics.cfind_status(0xA700) == "failure"
    assert metrics.cfind_status(0xC001) == "failure"
