"""gpuad's modules import each other without a circle, imports inside functions included.

A lazy import inside a function defers a circle to run time but does not remove it: "which layer
may call which" then has no answer, and the next top-level import along it is an ImportError that
is hard to trace. The layers (docs/design.md): `api`, `errors` at the bottom, then the engine
(`gpuad.ad`), the interpreter, the compiler and targets, the driver, and `kernel`, `host` and the
package on top; a lower layer that needs a higher one gets it handed down (`api.def_host_impl`,
`Program.differentiate`), never imports it.

The graph is read from the source with `ast`: `import a.b` and `from a import b` (b a module) name
module a.b; `from a import name` names a. Python imports a module's parent packages before it;
that implicit edge is not counted (every module would sit in one circle with its package's
`__init__`), an explicit import of a package is.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gpuad"


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(module, line) for every import of one of `modules` anywhere in the file, functions included."""
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, node.lineno))
                elif base in modules:
                    found.append((base, node.lineno))
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line of such an import}."""
    modules = module_names(package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imported_modules(name, path, modules):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, colours)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]], package: Path = PACKAGE) -> str:
    modules = module_names(package)
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        where = modules[a].relative_to(package.parent)
        steps.append(f"  {where}:{graph[a][b]} imports {b}")
    return "import circle:\n" + "\n".join(steps)


def test_the_import_graph_of_gpuad_has_no_circle():
    graph = import_graph()
    assert len(graph) > 50 and "gpuad.compiler.driver" in graph
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


def test_the_record_does_not_import_its_display():
    """The record is data; the notebook layer installs its display from above (`record.def_display`)."""
    graph = import_graph()
    assert not [m for m in graph["gpuad.record"] if m.startswith("gpuad.notebook")]
    assert "gpuad.record" in graph["gpuad.notebook.display"]
    assert "gpuad.notebook.display" in graph["gpuad"]


def test_gradient_checks_do_not_import_their_view():
    """The reports are numbers and verdicts; gpuad.notebook.gradcheck_view draws them."""
    graph = import_graph()
    assert not [m for m in graph["gpuad.gradient_check"] if m.startswith("gpuad.notebook")]
    assert "gpuad.gradient_check" in graph["gpuad.notebook.gradcheck_view"]


def test_api_is_a_leaf():
    """The vocabulary every layer imports imports nothing of gpuad's (its host implementation is
    installed from above: `api.def_host_impl`)."""
    assert import_graph()["gpuad.api"] == {}


def test_lazy_imports_and_packages_are_edges(tmp_path):
    """The reader sees an import inside a function, a relative import and `from package import name`."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import f\n")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n    return b\n")
    (package / "sub" / "__init__.py").write_text("X = 1\n")
    (package / "sub" / "b.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("def g():\n    from pkg import f\n")
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.a": 1}, "pkg.a": {"pkg.sub.b": 2}, "pkg.sub": {},
                     "pkg.sub.b": {"pkg.sub.c": 1}, "pkg.sub.c": {"pkg": 2}}
    cycle = find_cycle(graph)
    assert cycle == ["pkg", "pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg"]
    assert "pkg/sub/c.py:2 imports pkg" in describe(cycle, graph, package)
