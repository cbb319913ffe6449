"""No import cycle among the package's modules, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bigthoughts"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of this package it imports anywhere in its body}``."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_function_level_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = import_graph()
    assert "bigthoughts.models.checkpoints" in graph["bigthoughts.models.registry"]
    assert "bigthoughts.training" in graph["bigthoughts.cli"]  # imported inside a function
    assert len([m for m in graph if m.startswith("bigthoughts.training")]) >= 9
    assert cycles(graph) == []


def test_the_training_loop_knows_no_grpo() -> None:
    graph = import_graph()
    for module in ("bigthoughts.training.loop", "bigthoughts.training.progress",
                   "bigthoughts.training.relay", "bigthoughts.training.rundir"):
        assert not {d for d in graph[module] if "grpo" in d or d.endswith("rollout")}, module


STAGES = ("inference", "training", "evaluation", "serve")


def _imports_of(graph: dict[str, set[str]], folder: str) -> dict[str, set[str]]:
    prefix = f"bigthoughts.{folder}"
    return {m: deps for m, deps in graph.items() if m == prefix or m.startswith(prefix + ".")}


def test_inference_imports_neither_training_nor_evaluation() -> None:
    for module, deps in _imports_of(import_graph(), "inference").items():
        assert not {d for d in deps if d.startswith(("bigthoughts.training",
                                                     "bigthoughts.evaluation"))}, module


def test_models_import_no_stage() -> None:
    stages = tuple(f"bigthoughts.{s}" for s in STAGES)
    found = _imports_of(import_graph(), "models")
    assert "bigthoughts.models.resolve" in found
    for module, deps in found.items():
        assert not {d for d in deps if d.startswith(stages)}, module


def test_an_engine_needs_only_the_contract_of_inference() -> None:
    """Each engine imports the contract module, never another engine."""
    graph = import_graph()
    engines = ("bigthoughts.inference.jax_sampler", "bigthoughts.inference.llamacpp")
    for engine in engines:
        assert "bigthoughts.inference.contract" in graph[engine]
        assert not graph[engine] & set(engines), engine


def test_the_guards_can_fail() -> None:
    """The folder filter sees a stage import when there is one."""
    graph = {"bigthoughts.models.x": {"bigthoughts.training.y"}, "bigthoughts.modelsx": set()}
    assert list(_imports_of(graph, "models")) == ["bigthoughts.models.x"]


def test_no_module_over_500_lines_and_no_function_over_60() -> None:
    long_functions = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 500, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.end_lineno - node.lineno + 1 > 60:
                    long_functions.append(f"{path.name}:{node.name}")
    assert long_functions == []
