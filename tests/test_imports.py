"""The package's import structure, read from the source (AST, function-level imports too)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "luke_spacy"
INSPECTION = {("inspect", "stack"), ("inspect", "currentframe")}


def parsed() -> Dict[str, ast.Module]:
    return {
        path.stem: ast.parse(path.read_text(encoding="utf8"), str(path))
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__init__"
    }


def imported(tree: ast.Module) -> Set[str]:
    """Every top-level module name a module imports, at any depth ('.x' for the package's)."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                name = node.module or ""
                if name.startswith("luke_spacy."):
                    names.add("." + name.split(".")[1])
                else:
                    names.add(name.split(".")[0])
            elif node.module:
                names.add("." + node.module.split(".")[0])
            else:  # from . import x
                names.update("." + alias.name for alias in node.names)
    return names


def package_graph() -> Dict[str, Set[str]]:
    modules = parsed()
    return {
        name: {n[1:] for n in imported(tree) if n.startswith(".") and n[1:] in modules}
        for name, tree in modules.items()
    }


def cycles(graph: Dict[str, Set[str]]) -> List[Set[str]]:
    """The strongly connected components with more than one module, or a self-import."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[Set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_finds_a_cycle_where_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from .cli import main\n    from luke_spacy.pipe import x\n")
    assert imported(tree) == {".cli", ".pipe"}


def test_no_import_cycle():
    assert cycles(package_graph()) == []


@pytest.mark.parametrize("module", ["windowing", "encoding", "decoding"])
def test_the_recipe_imports_neither_torch_nor_spacy(module):
    names = imported(parsed()[module])
    assert not names & {"torch", "spacy", "thinc", "transformers", "spacy_transformers"}
    # nor anything of the package that does
    assert {n for n in names if n.startswith(".")} <= {".windowing", ".encoding"}


@pytest.mark.parametrize(
    "module",
    [
        "pipe",
        "runtime",
        "planning",
        "scheduling",
        "backend",
        "settings",
        "training",
        "onnx_backend",
        "onnx_files",
    ],
)
def test_only_the_torch_backend_imports_torch(module):
    assert "torch" not in imported(parsed()[module])


def test_no_stack_inspection():
    """Behaviour never depends on who called (sys._getframe, inspect.stack/currentframe)."""
    for name, tree in parsed().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr != "_getframe", name
                module = node.value.id if isinstance(node.value, ast.Name) else None
                assert (module, node.attr) not in INSPECTION, name
