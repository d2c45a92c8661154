"""The package's import rule (ARCHITECTURE.md): no import circle, at module level or inside
a function, and no library module imports a command module. Read from the source with
`ast`, so an import hidden in a function counts as much as one at the top."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "bloodcells"
# Modules whose one job is a command line: nothing in the package imports them.
COMMANDS = {"build", "clean", "local_eval", "synth", "train", "untrained"}


def imports_of(path, modules: set) -> set:
    """The package modules `path` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("bloodcells")):
            dotted = (node.module or "").removeprefix("bloodcells").lstrip(".") if node.level == 0 else node.module
            if dotted:
                found.add(dotted.split(".")[0])
            else:  # from . import a, b
                found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("bloodcells.")}
    return (found & modules) - {path.stem}


def import_graph() -> dict:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    return {name: imports_of(PACKAGE / f"{name}.py", modules) for name in sorted(modules)}


def circles(graph: dict) -> list:
    """Every strongly connected group of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_the_package_has_no_import_circle():
    graph = import_graph()
    found = circles(graph)
    detail = "; ".join(" <-> ".join(f"{m} (imports {', '.join(sorted(graph[m] & set(g)))})" for m in g)
                       for g in found)
    assert not found, f"import circles: {detail}"


def test_no_library_module_imports_a_command_module():
    graph = import_graph()
    assert COMMANDS <= set(graph), COMMANDS - set(graph)
    offenders = {m: sorted(deps & COMMANDS) for m, deps in graph.items() if deps & COMMANDS}
    assert not offenders, f"library modules importing commands: {offenders}"


def test_the_rule_sees_circles_and_imports_inside_functions(tmp_path):
    """The checks can fail: a circle closed by an import inside a function is found."""
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from bloodcells.a import y\n    return y\n")
    (tmp_path / "c.py").write_text("from . import a\n")
    modules = {"a", "b", "c"}
    graph = {name: imports_of(tmp_path / f"{name}.py", modules) for name in modules}
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert circles(graph) == [["a", "b"]]
