"""The mypy ratchet's rules (tools/mypy_ratchet.py), without running mypy.

CI runs the ratchet itself as a gate; these check that it says no when it should, and
that the committed list and baseline agree.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ratchet() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mwl_mypy_ratchet", ROOT / "tools" / "mypy_ratchet.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CONFIG = {
    "strict": True,
    "files": ["mwl", "web"],
    "overrides": [
        {"module": ["flask_wtf.*"], "ignore_missing_imports": True},
        {"module": ["web.a", "web.b"], "warn_return_any": False},
    ],
}


def test_the_strict_run_leaves_out_only_the_override_of_our_modules(ratchet: ModuleType) -> None:
    strict, listed = ratchet.split_config(CONFIG)
    assert listed == ["web.a", "web.b"]
    assert strict["overrides"] == [{"module": ["flask_wtf.*"], "ignore_missing_imports": True}]
    assert strict["strict"] is True
    written = tomllib.loads(ratchet.to_toml(strict))["tool"]["mypy"]
    assert written == strict


def test_a_module_added_to_the_list_fails(ratchet: ModuleType) -> None:
    problems = ratchet.check(["web.a", "web.b"], {"web.a": 3}, Counter({"web.a": 3}), {})
    assert len(problems) == 1
    assert problems[0].startswith("web.b was added to the mypy ratchet list")


def test_a_module_taken_off_the_list_must_leave_the_baseline(ratchet: ModuleType) -> None:
    problems = ratchet.check(["web.a"], {"web.a": 1, "web.b": 1}, Counter({"web.a": 1}), {})
    assert problems == [
        "web.b is no longer in the ratchet list: remove it from mypy_baseline.json too"
    ]


def test_more_errors_than_the_baseline_fail_and_are_shown(ratchet: ModuleType) -> None:
    lines = {"web.a": ["web/a.py:1: error: x", "web/a.py:2: error: y"]}
    problems = ratchet.check(["web.a"], {"web.a": 1}, Counter({"web.a": 2}), lines)
    assert problems == [
        "web.a: 2 mypy --strict errors, 1 allowed:\n  " + "\n  ".join(lines["web.a"])
    ]


def test_an_error_outside_the_list_fails(ratchet: ModuleType) -> None:
    problems = ratchet.check(["web.a"], {"web.a": 1}, Counter({"web.c": 1}), {"web.c": ["e"]})
    assert problems == ["web.c: 1 mypy --strict errors, 0 allowed:\n  e"]


def test_at_or_below_the_baseline_holds(ratchet: ModuleType) -> None:
    assert (
        ratchet.check(["web.a", "web.b"], {"web.a": 2, "web.b": 1}, Counter({"web.a": 2}), {}) == []
    )


def test_the_committed_list_and_baseline_agree(ratchet: ModuleType) -> None:
    mypy_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    _, listed = ratchet.split_config(mypy_config)
    baseline = json.loads((ROOT / "tools" / "mypy_baseline.json").read_text())
    assert sorted(listed) == sorted(baseline)
    assert all(count > 0 for count in baseline.values())
