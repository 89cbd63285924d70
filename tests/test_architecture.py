"""The package's shape, read from its source with ast: folders are layers whose imports only go
down, no two modules import each other (directly or around a loop, function-level imports
included), and files and the pipeline class stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unclip"

# Low to high; a module may import its own group and any lower layer. networks and diffusion share
# a layer but not a group: the diffusion math never imports a network.
LAYERS = {
    "unclip": 0,
    "unclip.config": 0,
    "unclip.safety": 0,
    "unclip.data": 1,
    "unclip.networks": 2,
    "unclip.diffusion": 2,
    "unclip.checkpoint": 3,
    "unclip.pipeline": 4,
    "unclip.evaluation": 5,
    "unclip.training": 6,
    "unclip.server": 7,
    "unclip.cli": 8,
    "unclip.__main__": 9,  # `python -m unclip`: the command itself
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in its body; ``from pkg import name`` counts
    as importing ``pkg.name`` when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def group(name: str) -> str:
    return max((g for g in LAYERS if name == g or name.startswith(g + ".")), key=len)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_read_from_the_source():
    edges = graph()
    assert "unclip.pipeline.cascade" in edges["unclip.pipeline.assemble"]
    assert "unclip.diffusion.sampling" in edges["unclip.pipeline.inpaint"]
    assert "unclip.training.stages.clip" in edges["unclip.training.stages"]  # `from pkg import module`
    assert "unclip.pipeline.inpaint" in edges["unclip.pipeline.cascade"]  # `import pkg.module as name`


def test_no_import_cycle_between_modules():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_only_go_down_the_layers():
    wrong = []
    for name, targets in graph().items():
        for target in targets:
            same_group = group(name) == group(target)
            if not same_group and LAYERS[group(target)] >= LAYERS[group(name)]:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_every_module_has_a_layer():
    assert all(group(name) in LAYERS for name in modules())
    assert {group(name) for name in modules()} == set(LAYERS)  # no layer is left empty or misspelt


@pytest.mark.parametrize("limit", [600])
def test_no_python_file_is_long(limit):
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > limit}
    assert long == {}


def test_the_pipeline_class_is_small():
    tree = ast.parse((PACKAGE / "pipeline" / "cascade.py").read_text())
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "UnCLIPPipeline"]
    assert cls.end_lineno - cls.lineno + 1 <= 150
