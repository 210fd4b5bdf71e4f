"""The house's dependency rules, read from the source: no import circles, no private names across
modules, and the request engine below the stages that use it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "filters")


def modules() -> dict[str, Path]:
    """Every module of the house by dotted name (a package by its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, str | None]]:
    """``(module, name)`` of every import in a file, at any depth (a lazy import is a dependency too);
    ``name`` is the imported name of a ``from module import name`` that is not itself a module."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full, None) if full in known else (str(node.module), alias.name)


def owner(name: str, known: dict[str, Path]) -> str | None:
    """The house module that ``name`` (a module or a dotted path into one) belongs to."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for target, _ in imports(path, known):
            found = owner(target, known)
            if found is not None and found != module:
                edges[module].add(found)
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles_between_modules():
    assert cycle(graph()) is None, " -> ".join(cycle(graph()) or [])


def test_the_circle_check_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_modules_private_names():
    known = modules()
    private = [f"{module} imports {name} from {target}"
               for module, path in known.items() for target, name in imports(path, known)
               if name is not None and name.startswith("_") and owner(target, known) not in (None, module)]
    assert private == []


def test_the_request_engine_imports_no_stage_and_its_executors_nothing_back():
    edges = graph()
    stages = ("pipeline.generate", "pipeline.classify", "pipeline.filter", "pipeline.train", "pipeline.eval",
              "pipeline.hub", "pipeline.cli", "pipeline.demo", "pipeline.config")
    engine = {m: deps for m, deps in edges.items() if m.startswith("pipeline.llm")}
    assert engine, "pipeline.llm has no modules"
    upward = [f"{m} -> {d}" for m, deps in engine.items() for d in deps if d.startswith(stages)]
    assert upward == []
    for executor in ("pipeline.llm.online", "pipeline.llm.batch", "pipeline.llm.shard"):
        assert "pipeline.llm.run" not in edges[executor], executor


def test_eval_does_not_import_training():
    edges = graph()
    assert [f"{m} -> {d}" for m, deps in edges.items() if m.startswith("pipeline.eval")
            for d in deps if d.startswith("pipeline.train")] == []


def test_only_the_cli_entry_points_take_the_root_config():
    """Below a stage's entry function, helpers take their section (plus the run directory, the seed)."""
    from pipeline.cli import COMMANDS

    entries = {target.replace(":", ".") for target, _ in COMMANDS.values()}
    takers = set()
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                if any(a.annotation is not None and ast.unparse(a.annotation).strip("'\"") == "Config" for a in args):
                    takers.add(f"{module}.{node.name}")
    assert takers - entries == set()
    assert takers  # the check sees the entry points themselves
