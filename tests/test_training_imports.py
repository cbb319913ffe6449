"""The training package has no import cycle, function-level imports included."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bigthoughts"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the bigthoughts modules it imports anywhere in its body."""
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from pkg import submodule` imports the submodule; `from m import x`, m
                # (and `from pkg import f, submodule` both, pkg's __init__ running first)
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in files]
                if len(targets) < len(subs):
                    targets.append(node.module)
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if one exists."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for dep in graph.get(node, ()):
            if dep == start:
                return path + [start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, path + [dep]))
    return None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # bigthoughts.cli imports the training package inside cmd_train only
    assert "bigthoughts.training" in graph["bigthoughts.cli"]
    assert "bigthoughts.training.rollout" in graph["bigthoughts.training.grpo_trainer"]
    assert cycle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]


def test_no_import_cycle_through_the_training_package():
    graph = import_graph()
    training = [m for m in graph if m.startswith("bigthoughts.training")]
    assert len(training) >= 9
    for module in training + ["bigthoughts.grpo"]:
        assert cycle_through(graph, module) is None, cycle_through(graph, module)


def test_the_loop_knows_no_grpo():
    graph = import_graph()
    for module in ("bigthoughts.training.loop", "bigthoughts.training.progress",
                   "bigthoughts.training.relay", "bigthoughts.training.rundir"):
        assert not {d for d in graph[module] if "grpo" in d or d.endswith("rollout")}, module
