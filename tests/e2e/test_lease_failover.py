"""Lease fail-over between two processes on PostgreSQL: a hung holder, then a killed one.

The holders are bench/lease_failover.py's (``--hold``): each tries the lease as the
RIS sender does and says ``run`` while it holds it. With a 3 s lifetime, a holder
stopped by SIGSTOP (its kernel still answers TCP keepalives) loses the lease to the
other within the lifetime and a few seconds; continued, it stands by and does not
run while the other holds; killed -9, the other takes over at its next try.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.databases import POSTGRES_URL, postgres_unavailable

pytestmark = pytest.mark.e2e

LIFETIME_S = 3.0
POLL_S = 0.3


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "lease_failover.py"
    spec = importlib.util.spec_from_file_location("lease_failover", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_the_lease_fails_over_after_a_hang_and_after_kill_9():
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    found = _bench().one_round(POSTGRES_URL, LIFETIME_S, 2.0, POLL_S)
    # Not before the server ended the silent session, and not long after.
    assert LIFETIME_S * 2 / 3 - 0.5 <= found.hang_s <= LIFETIME_S + 5, found
    assert not found.ran_after_wake, found
    assert found.kill_s <= 5, found
