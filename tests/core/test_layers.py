"""Import layers, read from the source (``ast``, nothing imported).

The core (``mwl/`` except the adapters ``mwl/hl7``, ``mwl/dicom`` and the composition
root ``mwl/cli.py``) knows no adapter and no protocol or web library; the adapters
(``mwl.hl7``, ``mwl.dicom``, ``web``) know the core but not each other; the store
knows only the shared core modules; the core's parts import each other one way only.
Only ``mwl.cli`` wires adapters together.

Imports anywhere in a module count: at the top, inside functions (the lazy ones),
under ``TYPE_CHECKING``. A failure lists each import with the rule it breaks.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_TOPS = ("mwl", "web")

# Modules of the core that are shared by all its parts (the store may use them).
SHARED_CORE = ("mwl.config", "mwl.domain", "mwl.errors")
# A web import of an adapter would be named here, each with why it is allowed.
# There is none: the page gets the DICOM preview and listing and the HL7 describer
# and reprocessor from mwl.cli, as callables typed in web.store.
WEB_ADAPTER_IMPORTS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    path: str  # its file, relative to the repository
    line: int
    target: str  # the imported module, dotted

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(module: str, is_package: bool, node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        yield source
        # ``from mwl.admin import users`` imports the module mwl.admin.users too.
        for alias in node.names:
            if _is_source_module(f"{source}.{alias.name}"):
                yield f"{source}.{alias.name}"


def _is_source_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _parse(path: Path) -> list[Import]:
    module = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    relative = path.relative_to(ROOT).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(module, path.name == "__init__.py", node):
                found.append(Import(module, relative, node.lineno, target))
    return found


def _all_imports() -> list[Import]:
    found = []
    for top in SOURCE_TOPS:
        for path in sorted((ROOT / top).rglob("*.py")):
            found.extend(_parse(path))
    return found


IMPORTS = _all_imports()


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_core(module: str) -> bool:
    return _within(module, "mwl") and not _within(module, "mwl.hl7", "mwl.dicom", "mwl.cli")


def _top(name: str) -> str:
    return name.split(".")[0]


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[str], bool]  # to the importing module
    forbids: Callable[[Import], bool]


RULES = [
    Rule(
        "the core imports no adapter (mwl.hl7, mwl.dicom, web), not the composition root "
        "(mwl.cli), and no protocol or web library (pynetdicom, pydicom, hl7apy, flask "
        "and its extensions, the web server)",
        _is_core,
        lambda i: (
            _within(i.target, "mwl.hl7", "mwl.dicom", "mwl.cli", "web")
            or _top(i.target) in {"pynetdicom", "pydicom", "hl7apy", "waitress", "cheroot"}
            or _top(i.target) == "flask"
            or _top(i.target).startswith("flask_")
        ),
    ),
    Rule(
        "the HL7 adapter imports neither the DICOM adapter nor the web page",
        lambda m: _within(m, "mwl.hl7"),
        lambda i: _within(i.target, "mwl.dicom", "web"),
    ),
    Rule(
        "the DICOM adapter imports neither the HL7 adapter nor the web page",
        lambda m: _within(m, "mwl.dicom"),
        lambda i: _within(i.target, "mwl.hl7", "web"),
    ),
    Rule(
        "the web page imports neither the HL7 nor the DICOM adapter",
        lambda m: _within(m, "web"),
        lambda i: (
            _within(i.target, "mwl.hl7", "mwl.dicom")
            and (i.module, i.target) not in WEB_ADAPTER_IMPORTS
        ),
    ),
    Rule(
        "the store imports no other part of mwl than mwl.config, mwl.domain, mwl.errors",
        lambda m: _within(m, "mwl.store"),
        lambda i: (
            _within(i.target, "mwl")
            and i.target != "mwl"
            and not _within(i.target, "mwl.store", *SHARED_CORE)
        ),
    ),
]


def _broken(rule: Rule, imports: list[Import]) -> list[Import]:
    return [i for i in imports if rule.applies(i.module) and rule.forbids(i)]


def test_the_sources_are_read():
    # A wrong ROOT or glob would let every rule pass on nothing.
    modules = {i.module for i in IMPORTS}
    assert {"mwl.store.engine", "mwl.orders.apply", "mwl.hl7.server", "web.items"} <= modules
    assert any(i.module == "mwl.cli" and i.target == "mwl.dicom.scp" for i in IMPORTS)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name.split(" imports")[0])
def test_rule(rule: Rule):
    broken = _broken(rule, IMPORTS)
    assert not broken, f"{rule.name}; broken by:\n" + "\n".join(f"  {i}" for i in broken)


@pytest.mark.parametrize(
    ("rule", "module", "target"),
    [
        (RULES[0], "mwl.orders.edits", "mwl.dicom.listing"),
        (RULES[0], "mwl.worklist.matching", "pydicom.dataset"),
        (RULES[0], "mwl.admin.users", "flask_login"),
        (RULES[1], "mwl.hl7.server", "web.store"),
        (RULES[2], "mwl.dicom.scp", "mwl.hl7.server"),
        (RULES[3], "web.scanners", "mwl.dicom.preview"),
        (RULES[4], "mwl.store.models", "mwl.orders.apply"),
    ],
)
def test_rule_catches(rule: Rule, module: str, target: str):
    # The rules themselves, on made-up imports: each must be able to fail.
    assert _broken(rule, [Import(module, "made-up.py", 1, target)])


def _part(module: str) -> str | None:
    """The core part a module belongs to: mwl.orders.apply -> "orders", mwl.config -> "config"."""
    if not _is_core(module) or module == "mwl":
        return None
    return module.split(".")[1]


def _cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected groups of more than one part (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        source, target = _part(i.module), _part(i.target)
        if source and target and source != target:
            graph.setdefault(source, set()).add(target)
            graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_core_parts_import_each_other_one_way():
    cycles = _cycles(IMPORTS)
    lines = []
    for group in cycles:
        lines.append(f"  {' <-> '.join(group)}, through:")
        lines.extend(
            f"    {i}"
            for i in IMPORTS
            if _part(i.module) in group
            and _part(i.target) in group
            and _part(i.module) != _part(i.target)
        )
    assert not cycles, "core parts that import each other:\n" + "\n".join(lines)


def test_cycles_are_found():
    made_up = [
        Import("mwl.orders.edits", "made-up.py", 1, "mwl.worklist.matching"),
        Import("mwl.worklist.matching", "made-up.py", 2, "mwl.orders.apply"),
        Import("mwl.worklist.matching", "made-up.py", 3, "mwl.store.models"),
    ]
    assert _cycles(made_up) == [["orders", "worklist"]]
