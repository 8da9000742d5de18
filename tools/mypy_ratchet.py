"""The mypy --strict ratchet: the modules not yet strict-clean may only get fewer.

pyproject.toml makes mypy strict on mwl/ and web/ and relaxes a few flags for the
modules in one override, the ratchet list (the override whose modules are ours). This
script checks that list against tools/mypy_baseline.json, which holds how many errors
each listed module has under the full strict settings:

- a module in the list but not in the baseline was added: fail (the list only shrinks);
- a module in the baseline but not in the list was made clean: drop it from the baseline;
- mypy is run with the ratchet override left out; a listed module with more errors than
  its baseline fails, and so does an error in any module not listed.

``--update`` lowers the baseline to today's counts (it never raises one) and drops the
modules that are clean; take those out of the list in pyproject.toml too.

Run it as ``.venv/bin/python tools/mypy_ratchet.py`` (from anywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
BASELINE = ROOT / "tools" / "mypy_baseline.json"
FIRST_PARTY = ("mwl", "web")
ERROR = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+(?::\d+)?: error: ")


def _is_ours(module: str) -> bool:
    return module.split(".", 1)[0] in FIRST_PARTY


def split_config(mypy_config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The mypy settings without the ratchet override, and the ratchet list."""
    kept, ratchet = [], None
    for override in mypy_config.get("overrides", []):
        modules = override["module"]
        modules = [modules] if isinstance(modules, str) else list(modules)
        if all(_is_ours(m) for m in modules):
            if ratchet is not None:
                raise SystemExit("pyproject.toml: more than one override of mwl/web modules")
            ratchet = modules
        else:
            kept.append(override)
    strict = {**mypy_config, "overrides": kept}
    return strict, ratchet or []


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise SystemExit(f"pyproject.toml: mypy setting {value!r} is not a value this script writes")


def to_toml(mypy_config: dict[str, Any]) -> str:
    """``mypy_config`` as a pyproject-style TOML file mypy reads with --config-file."""
    lines = ["[tool.mypy]"]
    for key, value in mypy_config.items():
        if key != "overrides":
            lines.append(f"{key} = {_toml_value(value)}")
    for override in mypy_config.get("overrides", []):
        lines.append("[[tool.mypy.overrides]]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in override.items())
    return "\n".join(lines) + "\n"


def module_of(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def strict_errors(mypy_config: dict[str, Any]) -> tuple[Counter[str], dict[str, list[str]]]:
    """mypy's errors per module under ``mypy_config``, counted and as printed."""
    from mypy import api  # here: the checks above run (and are tested) without mypy

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pyproject.toml"
        config.write_text(to_toml(mypy_config), encoding="utf-8")
        # Its own cache: the relaxed and the strict run would invalidate each other's.
        out, err, status = api.run(
            ["--config-file", str(config), "--cache-dir", str(ROOT / ".mypy_cache" / "ratchet")]
        )
    if status not in (0, 1) or err:
        raise SystemExit(f"mypy did not run (exit {status}):\n{err}{out}")
    counts: Counter[str] = Counter()
    lines: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = ERROR.match(line)
        if match:
            module = module_of(match["path"])
            counts[module] += 1
            lines.setdefault(module, []).append(line)
    return counts, lines


def check(
    listed: list[str], baseline: dict[str, int], counts: Counter[str], lines: dict[str, list[str]]
) -> list[str]:
    """What breaks the ratchet, one sentence each (empty: it holds)."""
    problems = []
    for module in sorted(set(listed) - set(baseline)):
        problems.append(
            f"{module} was added to the mypy ratchet list in pyproject.toml: the list may "
            "only shrink; make the module strict-clean instead"
        )
    for module in sorted(set(baseline) - set(listed)):
        problems.append(
            f"{module} is no longer in the ratchet list: remove it from {BASELINE.name} too"
        )
    for module in sorted(counts):
        allowed = baseline.get(module, 0) if module in listed else 0
        if counts[module] > allowed:
            problems.append(
                f"{module}: {counts[module]} mypy --strict errors, {allowed} allowed:\n  "
                + "\n  ".join(lines[module])
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="lower the baseline to today's")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # pyproject.toml's paths (files, mypy_path) are the root's

    mypy_config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["mypy"]
    strict, listed = split_config(mypy_config)
    baseline: dict[str, int] = json.loads(BASELINE.read_text(encoding="utf-8"))
    counts, lines = strict_errors(strict)

    if args.update:
        lowered = {
            m: min(n, counts[m]) for m, n in sorted(baseline.items()) if m in listed and counts[m]
        }
        BASELINE.write_text(json.dumps(lowered, indent=2) + "\n", encoding="utf-8")
        print(f"{BASELINE.name}: {sum(lowered.values())} errors in {len(lowered)} modules")
        for module in sorted(set(listed) - set(lowered)):
            if not counts[module]:
                print(f"{module} is strict-clean: remove it from the list in pyproject.toml")
        return 0

    problems = check(listed, baseline, counts, lines)
    for problem in problems:
        print(problem, file=sys.stderr)
    for module in sorted(m for m in listed if m in baseline and counts[m] < baseline[m]):
        note = "strict-clean" if not counts[module] else f"down to {counts[module]}"
        print(f"note: {module} is {note}: run tools/mypy_ratchet.py --update to keep it so")
    total = sum(counts[m] for m in listed)
    print(
        f"mypy ratchet: {total} strict errors in {len(listed)} listed modules "
        f"(baseline {sum(baseline.values())}); {'FAILED' if problems else 'ok'}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
