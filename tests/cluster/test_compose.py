"""docker/haproxy.cfg is the cluster harness's HAProxy template; the compose file fits it.

No server is started: these run in the fast subset.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.cluster.harness import HAPROXY, REPO_ROOT, compose_haproxy_config

CONFIG = REPO_ROOT / "docker" / "haproxy.cfg"
COMPOSE = REPO_ROOT / "docker-compose.cluster.yml"


def test_docker_haproxy_cfg_is_the_harness_template():
    assert CONFIG.read_text() == compose_haproxy_config(), (
        "regenerate it: python -m tests.cluster.harness > docker/haproxy.cfg"
    )


def test_the_balancer_checks_liveness_never_readiness():
    config = CONFIG.read_text()
    assert config.count("uri /health") == 3
    assert "uri /ready" not in config


@pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason="HAProxy is not installed")
def test_haproxy_accepts_the_configuration():
    # The broker names do not resolve here; init-addr none lets HAProxy start anyway.
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr


def test_the_compose_file_runs_two_brokers_on_one_database_behind_haproxy():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    brokers = [services["broker1"], services["broker2"]]
    urls = {b["environment"]["MWL_DATABASE_URL"] for b in brokers}
    keys = {b["environment"]["MWL_WEB_SECRET_KEY"] for b in brokers}
    assert len(urls) == 1 and len(keys) == 1
    assert (
        "./docker/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
        in services["haproxy"]["volumes"]
    )
    assert all("ports" not in b for b in brokers), "only HAProxy is published"
    balancer = services["haproxy"]["networks"]["mwl"]["ipv4_address"]
    assert {b["environment"]["MWL_WEB_TRUSTED_PROXIES"] for b in brokers} == {balancer}
    # The MLLP and DICOM lines send the PROXY protocol; the brokers accept it from it.
    assert {b["environment"]["MWL_PROXY_PROTOCOL_FROM"] for b in brokers} == {f'["{balancer}"]'}
    assert CONFIG.read_text().count("send-proxy-v2") == 4
