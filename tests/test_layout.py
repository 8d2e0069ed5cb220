"""The house stays a house: tuner/ is wings whose imports run downward only, with no circle, and no function
past 60 lines. Reads the source (every import, also those inside functions), imports nothing of tuner."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tuner"

# Floors, top to bottom: a wing may import its own modules and any wing on a lower floor, never one on its own
# floor or above (spec and store share a floor and do not import each other).
FLOORS = [["cli"], ["report"], ["engine"], ["fleet"], ["data"], ["spec", "store"], ["errors"]]
RANK = {wing: len(FLOORS) - i for i, floor in enumerate(FLOORS) for wing in floor}
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py"} | {w + "/" for floor in FLOORS for w in floor if w != "errors"}
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str) -> set[str]:
    """Every tuner module that `path` imports, at the top or inside a function."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `level - 1` steps up
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from tuner.cli import ui` imports a module
    return {m for m in found if m == "tuner" or m.startswith("tuner.")}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported_modules(path, name) if m in modules} - {name}
            for name, path in modules.items()}


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for importer, imported in graph.items():
        for target in imported:
            a, b = wing(importer), wing(target)
            if a is None or b is None or a == b:  # tuner/__main__ and tuner/__init__ stand above the house
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{importer} -> {target} ({a} may not import {b})")
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once, found by depth-first search (a back edge closes one)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[tuple[int, str]]:
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - min([node.lineno] + [d.lineno for d in node.decorator_list]) + 1
                if lines > limit:
                    too_long.append((lines, f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"))
    return sorted(too_long, reverse=True)


def test_tuner_holds_only_the_wings_errors_init_and_main():
    entries = {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == TOP_LEVEL


def test_every_wing_says_what_it_owns_and_what_it_may_import():
    for floor in FLOORS:
        for name in floor:
            if name == "errors":
                continue
            doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
            assert doc.startswith(f"{name} — ") and "May import" in doc, f"tuner/{name}/__init__.py"


def test_imports_run_downward_between_wings():
    bad = upward_imports(import_graph())
    assert not bad, "imports that climb:\n" + "\n".join(bad)


def test_no_import_circle_in_the_package():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_function_in_the_package_runs_past_60_lines():
    too_long = long_functions()
    assert not too_long, "functions past 60 lines:\n" + "\n".join(f"{n} {where}" for n, where in too_long)


# The checks themselves can fail: a made-up graph with an upward import and a circle is caught.
@pytest.mark.parametrize("graph, expected", [
    ({"tuner.fleet.worker": {"tuner.engine.objective"}}, ["tuner.fleet.worker -> tuner.engine.objective "
                                                         "(fleet may not import engine)"]),
    ({"tuner.spec.config": {"tuner.store.urls"}}, ["tuner.spec.config -> tuner.store.urls "
                                                  "(spec may not import store)"]),
    ({"tuner.engine.export": {"tuner.fleet.study"}, "tuner.cli.app": {"tuner.report.build"}}, []),
])
def test_the_upward_check_names_each_import_that_climbs(graph, expected):
    assert upward_imports(graph) == expected


def test_the_circle_check_finds_a_circle_through_three_modules():
    graph = {"tuner.engine.export": {"tuner.engine.objective"}, "tuner.engine.objective": {"tuner.engine.teacher"},
             "tuner.engine.teacher": {"tuner.engine.export"}, "tuner.engine.train": set()}
    assert circles(graph) == [["tuner.engine.export", "tuner.engine.objective", "tuner.engine.teacher",
                               "tuner.engine.export"]]
