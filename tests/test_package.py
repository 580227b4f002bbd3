"""The package as a whole: every docstring example runs, and the imports inside it form no cycle.

- The doctests are collected from every module of ``torchrl_rssm`` (``pkgutil.walk_packages``
  and ``doctest.DocTestFinder``), so a new module's examples run without being listed here.
- The import graph is read from the source with ``ast``, function-level (lazy) imports
  included: a lazy import hides a cycle from Python, not from a reader.
"""
from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import torchrl_rssm

PACKAGE_DIR = Path(torchrl_rssm.__file__).resolve().parent


def _module_names() -> list[str]:
    names = [torchrl_rssm.__name__]
    names += [info.name for info in pkgutil.walk_packages(torchrl_rssm.__path__, prefix="torchrl_rssm.")]
    return sorted(names)


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in _module_names():
        module = importlib.import_module(name)
        # DocTestFinder skips objects defined elsewhere (re-exports), so each example runs once
        tests += [t for t in finder.find(module, name) if t.examples]
    return tests


DOCTESTS = _doctests()


def test_doctests_are_collected_from_every_layer():
    """The collection reaches each subpackage; a broken walk would make the test below vacuous."""
    found = {t.name.split(".")[1] for t in DOCTESTS if t.name.count(".") >= 1}
    assert {"modules", "objectives", "planners", "policies", "envs", "data", "recipes", "interop"} <= found
    # the modules that had examples but no test running them before
    names = {t.name for t in DOCTESTS}
    for expected in ("torchrl_rssm.objectives.dreamer.DreamerActorLoss", "torchrl_rssm.planners.cem.CEMPlanner",
                     "torchrl_rssm.modules.rssm.RSSMRollout", "torchrl_rssm.modules.engine.imagine"):
        assert expected in names, expected


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name)
def test_docstring_example(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures: list[str] = []

    def report_failure(out, test, example, got):
        failures.append(f"line {example.lineno + 1 + (test.lineno or 0)}: {example.source.strip()}\n"
                        f"expected: {example.want.strip()}\ngot:      {got.strip()}")

    def report_exception(out, test, example, exc_info):
        failures.append(f"line {example.lineno + 1 + (test.lineno or 0)}: {example.source.strip()}\n"
                        f"raised {exc_info[0].__name__}: {exc_info[1]}")

    runner.report_failure = report_failure
    runner.report_unexpected_exception = report_exception
    result = runner.run(test, out=lambda s: None, clear_globs=True)
    assert result.failed == 0, f"{test.name} ({test.filename}):\n" + "\n\n".join(failures)


# --------------------------------------------------------------------------- import graph
def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package_dir: Path = PACKAGE_DIR, package: str = "torchrl_rssm") -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from the source, lazy imports included.

    ``from a import b`` counts as importing ``a.b`` when that is a module of the package,
    else ``a``. Importing a submodule also runs its parent packages' ``__init__``, but
    an edge to a parent package is kept out: every module's parents import it back
    through their ``__init__``, which is how packages are built, not a cycle of code.
    """
    modules: dict[str, tuple[Path, bool]] = {}
    for path in package_dir.rglob("*.py"):
        rel = path.relative_to(package_dir.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    found = known(target)
                    if found is not None and found != name and not name.startswith(found + "."):
                        edges.add(found)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_sees_lazy_and_relative_imports(tmp_path):
    """The graph builder on a hand-made package: a function-level relative import closes a cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    return b.g()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f  # lazy\n    return f\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycles(import_graph(pkg, "pkg")) == []


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert "torchrl_rssm.modules.rssm" in graph and graph["torchrl_rssm.objectives.dreamer"]  # the walk saw the source
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_layers_import_downwards_only():
    """modules import nothing above them; planners and objectives import modules and interop; policies
    import modules and planners (DESIGN.md)."""
    graph = import_graph()
    above = {
        "modules": {"interop", "objectives", "planners", "policies", "recipes", "cli", "data", "envs"},
        "interop": {"objectives", "planners", "policies", "recipes", "cli"},
        "objectives": {"planners", "policies", "recipes", "cli"},
        "planners": {"objectives", "policies", "recipes", "cli"},
        "policies": {"objectives", "recipes", "cli"},
    }
    wrong = []
    for module, imports in graph.items():
        layer = module.split(".")[1] if module.count(".") else None
        for target in imports:
            if target.count(".") and target.split(".")[1] in above.get(layer, ()):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
