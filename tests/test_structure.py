"""The package's structure: the import graph has no circle, and the floors import only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hamode", "lightning_modules")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """``{module: the project modules it imports}``, counting imports anywhere in the file (a function-level
    import closes a circle as surely as a top-level one)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from pkg import submodule` imports the submodule; `from module import name` the module
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import hamode.engines.fused` -> that module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert "hamode.engines.fused" in graph and "hamode.integrators.implicit" in graph  # the walk found the tree
    assert cycles(graph) == []


@pytest.mark.parametrize("floor", ["hamode.fields", "hamode.integrators", "hamode.grid", "hamode.autograd_context"])
def test_fields_and_integrators_import_nothing_from_the_engines(floor):
    graph = import_graph()
    below = {m: e for m, e in graph.items() if m == floor or m.startswith(floor + ".")}
    assert below
    for module, edges in below.items():
        upward = sorted(e for e in edges if e.startswith(("hamode.engines", "hamode.net", "hamode.models")))
        assert not upward, f"{module} imports {upward}"


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


GENERIC_FILES = [
    "tests/test_fused.py",
    "tests/test_fields.py",
    "tests/test_integrators.py",
    "tests/test_diagnostics.py",
]


def _run_generic_tests_on_a_copy(wrong_vjp: bool) -> dict[str, str]:
    """The generic test files in a sub-session that registers ``CopiedH1`` first: ``{test id: outcome}`` of the
    tests that ran on it."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests/plugins"), os.environ.get("PYTHONPATH", "")]),
        "HAMODE_WRONG_VJP": "1" if wrong_vjp else "0",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "pytest", "-p", "copied_architecture", "-k", "CopiedH1", "-rA", "-q", *GENERIC_FILES]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    outcomes = {}
    for line in done.stdout.splitlines():
        status, _, test = line.partition(" ")
        if status in ("PASSED", "FAILED", "ERROR") and "CopiedH1" in test:
            outcomes[test.split(" - ")[0]] = status
    return outcomes


def test_a_new_architecture_is_picked_up_by_every_generic_test():
    """Registering a field (here a copy of H1) runs it through fused == reference, reversible == backprop,
    parameter counting, order, symplecticity and the diagnostics, with no test edited; a copy whose fused VJP
    is wrong by 0.1 % fails the fused-vs-reference tests."""
    right = _run_generic_tests_on_a_copy(wrong_vjp=False)
    for path in GENERIC_FILES:
        assert any(t.startswith(path) for t in right), f"{path} ran no test on the new architecture"
    for name in (
        "test_fused_matches_reference",
        "test_reversible_matches_backprop_64_layers",
        "test_parameter_count_per_layer",
        "test_order_every_architecture",
        "test_symplectic_64_layers",
    ):
        assert any(f"::{name}[" in t for t in right), f"{name} did not run on the new architecture"
    assert set(right.values()) == {"PASSED"}, {t: s for t, s in right.items() if s != "PASSED"}
    wrong = _run_generic_tests_on_a_copy(wrong_vjp=True)
    failed = [t for t, s in wrong.items() if s == "FAILED"]
    assert any("::test_fused_matches_reference[" in t for t in failed), sorted(wrong.items())
    assert all("test_parameter_count_per_layer" not in t for t in failed)  # only what the VJP touches fails
