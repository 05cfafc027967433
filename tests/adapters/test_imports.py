"""Imports run one way (docs/design.md): no module of ``flowsde.adapters`` imports,
directly or through others, a module that imports it back -- at module level or inside a
function (a deferred import hides a cycle, it does not remove it)."""

import ast
import pathlib

import flowsde.adapters

PKG = pathlib.Path(flowsde.adapters.__file__).parent


def _graph():
    """module -> set of sibling modules it imports (relative imports of level 1, anywhere in the file)."""
    graph = {}
    for f in sorted(PKG.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module] if node.module else [a.name for a in node.names])
        graph[f.stem] = {d.split(".")[0] for d in deps}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(m):
        colour[m] = "grey"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if colour.get(d) == "grey":
                return stack[stack.index(d):] + [d]
            if d not in colour and (c := visit(d)):
                return c
        stack.pop()
        colour[m] = "black"
        return None

    for m in sorted(graph):
        if m not in colour and (c := visit(m)):
            return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_adapters_import_graph_is_acyclic():
    graph = _graph()
    assert {"schedules", "_schedule", "_discrete", "_diffusion"} <= set(graph)  # the scan saw the package
    assert _cycle(graph) is None, f"import cycle in flowsde.adapters: {' -> '.join(_cycle(graph))}"


def test_discrete_is_exported_from_schedules():
    from flowsde.adapters import schedules
    from flowsde.adapters._discrete import Discrete

    assert schedules.Discrete is Discrete and flowsde.adapters.Discrete is Discrete
