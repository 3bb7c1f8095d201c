"""The package's import graph: arrows point down the flow (DESIGN.md), so no two packages import each other."""

import ast
import collections
from pathlib import Path

import psp_deploy

ROOT = Path(psp_deploy.__file__).parent


def package_imports() -> dict[str, set[str]]:
    """{package or top-level module: the others it imports relatively}, from the source files' syntax."""
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        source = parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                folder = list(parts[:-1])
                target = folder[: len(folder) - (node.level - 1)] + [p for p in (node.module or "").split(".") if p]
                if target and target[0] != source:
                    edges[source].add(target[0].removesuffix(".py"))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest member
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_the_import_graph_finds_a_cycle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_between_packages():
    assert cycles(package_imports()) == []


def test_engines_and_calibration_do_not_reach_into_benchmark():
    edges = package_imports()
    assert "benchmark" not in edges["engines"] | edges["calibration"]
    assert edges["runtime"] <= {"bundle", "config", "errors", "files", "graph_io", "machine", "onnx_metadata"}
