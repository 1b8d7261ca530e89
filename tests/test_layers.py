"""The package's layer order (its docstring) holds: no module imports from a later layer,
and no import cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

import placer

PACKAGE = Path(placer.__file__).parent


def layer_of_module() -> dict[str, int]:
    """Module or subpackage name -> its layer number, read off the package docstring."""
    layers: dict[str, int] = {}
    for number, text in re.findall(r"^(\d+)\. [^:]*:(.*?)(?=^\d+\. |\Z)", placer.__doc__, re.M | re.S):
        for name in re.findall(r"``(\w+)``", text):
            layers[name] = int(number)
    return layers


def module_imports() -> dict[str, set[str]]:
    """Dotted module -> the placer modules it imports (at any depth of its body)."""
    result = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("placer"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("placer"))
        result[module] = found
    known = set(result)
    return {module: {name for name in names if name in known} for module, names in result.items()}


def top_name(module: str) -> str | None:
    """The name the docstring's layers use: the first component under ``placer``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_has_a_layer():
    layers = layer_of_module()
    names = {top_name(module) for module in module_imports()} - {None, "__main__"}
    assert names <= set(layers), f"modules missing from the layer list: {sorted(names - set(layers))}"


def test_no_module_imports_from_a_later_layer():
    layers = layer_of_module()
    upward = []
    for module, imported in module_imports().items():
        here = top_name(module)
        if here in (None, "__main__"):
            continue
        for name in imported:
            there = top_name(name)
            if there is not None and there != here and layers[there] > layers[here]:
                upward.append(f"{module} (layer {layers[here]}) imports {name} (layer {layers[there]})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = nx.DiGraph()
    for module, imported in module_imports().items():
        graph.add_edges_from((module, name) for name in imported if name != module)
    # a package's __init__ re-exporting its own modules is not a cycle of ideas
    for module, name in list(graph.edges):
        if name.startswith(module + "."):
            graph.remove_edge(module, name)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles[:3]
