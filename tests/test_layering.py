"""The house has no import cycles and keeps its layers: every import under pulse/ is read with ``ast``
(function-level and TYPE_CHECKING imports included), nothing is imported to find them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pulse"

# Primitives: maths and operators a solver is built from. They must not reach metrics or the solvers.
PRIMITIVES = ("pulse.losses", "pulse.downscale", "pulse.degradations", "pulse.optim")
SOLVERS = ("pulse.solvers.base", "pulse.solvers.pulse", "pulse.solvers.ilo")
# Run-level modules above the metrics (a metric computes numbers from tensors, not from a run).
ABOVE_METRICS = (*SOLVERS, "pulse.runner", "pulse.outputs", "pulse.restore", "pulse.cli_restore", "pulse.demo")


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """``{dotted name: file}`` for every module under ``root`` (``pulse/x/__init__.py`` is ``pulse.x``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


# Calls that import the module their first argument names: a string import is an import too.
DYNAMIC_IMPORTS = ("import_module", "__import__")


def dynamic_imports(tree: ast.AST) -> list[ast.Call]:
    """``importlib.import_module(...)`` / ``import_module(...)`` / ``__import__(...)`` calls in ``tree``."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in DYNAMIC_IMPORTS:
                calls.append(node)
    return calls


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every dotted name an ``import`` statement anywhere in ``source`` may load (relative ones resolved),
    and every module a string import (``importlib.import_module("pulse.x")``) names."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    for call in dynamic_imports(tree):
        if isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
            found.add(call.args[0].value)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules it imports}`` within the package.

    Importing ``a.b.c`` from outside ``a.b`` first runs ``a/b/__init__.py``, so that package counts as
    imported too (the root package aside: its exports are lazy).
    """
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            if name not in modules or name == module:
                continue
            targets.add(name)
            parts = name.split(".")
            for depth in range(2, len(parts)):
                parent = ".".join(parts[:depth])
                if parent in modules and not module.startswith(parent + ".") and parent != module:
                    targets.add(parent)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_reader_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pulse"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pulse.sub.b import x\n")
    (pkg / "a.py").write_text("def f():\n    from pulse.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n")
    graph = import_graph(pkg)
    assert graph["pulse.a"] == {"pulse.sub", "pulse.sub.b"} and graph["pulse.sub.b"] == {"pulse", "pulse.a"}
    assert find_cycle(graph) == ["pulse.a", "pulse.sub", "pulse.sub.b", "pulse.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_import_cycle_in_pulse():
    graph = import_graph()
    assert len(graph) > 30  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", PRIMITIVES)
def test_primitives_reach_no_metric_and_no_solver(module):
    reached = reachable(import_graph(), module)
    bad = sorted(m for m in reached if m.startswith("pulse.metrics") or m in ABOVE_METRICS)
    assert not bad, f"{module} depends on {bad}"


def test_metrics_do_not_need_the_solver():
    graph = import_graph()
    for module in [m for m in graph if m.startswith("pulse.metrics")]:
        bad = sorted(reachable(graph, module) & set(ABOVE_METRICS))
        assert not bad, f"{module} depends on {bad}"


def test_string_imports_are_edges_of_the_graph(tmp_path):
    """A cycle through ``importlib.import_module("...")`` (how losses once reached perceptual_terms) is caught."""
    pkg = tmp_path / "pulse"
    (pkg / "metrics").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "metrics" / "__init__.py").write_text("")
    (pkg / "losses.py").write_text(
        "import importlib\n\ndef _known_term(name):\n    importlib.import_module('pulse.perceptual_terms')\n"
    )
    (pkg / "perceptual_terms.py").write_text("from pulse.losses import register_loss_term\nimport pulse.metrics.niqe\n")
    (pkg / "metrics" / "niqe.py").write_text(
        "from importlib import import_module\nlosses = import_module('pulse.losses')\n"
    )
    graph = import_graph(pkg)
    assert "pulse.perceptual_terms" in graph["pulse.losses"] and "pulse.losses" in graph["pulse.metrics.niqe"]
    assert find_cycle(graph) == ["pulse.losses", "pulse.perceptual_terms", "pulse.losses"]
    assert "pulse.metrics.niqe" in reachable(graph, "pulse.losses")  # a primitive reaching a metric


def test_no_hidden_imports_in_pulse():
    """Every string import names its module literally, so the graph above sees it. The root package's lazy
    exports (``pulse.__getattr__``) are the one exception: nothing imports ``pulse`` itself for them."""
    hidden = []
    for module, path in module_names().items():
        for call in dynamic_imports(ast.parse(path.read_text(encoding="utf-8"))):
            literal = isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)
            if not literal and module != "pulse":
                hidden.append(f"{module}:{call.lineno}")
    assert hidden == [], f"imports whose module is not a literal string (the layering test cannot see them): {hidden}"


def test_perceptual_loss_terms_are_registered_explicitly():
    from pulse import losses, perceptual_terms

    assert "pulse.perceptual_terms" not in reachable(import_graph(), "pulse.losses")
    assert "pulse.losses" in import_graph()["pulse.perceptual_terms"]
    loss = perceptual_terms.perceptual_loss({"l2": 1, "niqe": 0.5}, eps=1e-3)
    assert isinstance(loss, losses.PulseLoss) and loss.weights == {"l2": 1.0, "niqe": 0.5} and loss.eps == 1e-3
    assert {"lpips_lr", "niqe"} <= set(losses.LOSS_TERMS) and set(losses.PERCEPTUAL_TERMS) == {"lpips_lr", "niqe"}


def test_without_pulse_perceptual_terms_a_perceptual_term_says_where_it_lives():
    import subprocess
    import sys

    code = "\n".join(
        ["from pulse.losses import PulseLoss", "try:", "    PulseLoss({'l2': 1, 'niqe': 1})", "except ValueError as e:"]
        + ["    print(e)"]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120, check=True
    )
    message = result.stdout.strip()
    assert message.startswith("unknown loss term(s) ['niqe']; valid terms: ['diversity', 'geocross', 'l1', 'l2']")
    assert "pulse.perceptual_terms.perceptual_loss" in message and "\n" not in message


def readme_layers(readme: Path = PACKAGE.parent / "README.md") -> list[list[str]]:
    """The modules of each row of README's architecture table, first layer first."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("## Layout and architecture") :]
    section = section[: section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    return [re.findall(r"`(pulse(?:\.\w+)*)`", row.split("|")[2]) for row in rows]


def test_readme_architecture_table_matches_the_code():
    layers = readme_layers()
    assert len(layers) >= 4, "README's architecture table was not found"
    layer_of = {}
    for index, modules in enumerate(layers):
        for module in modules:
            assert module not in layer_of, f"{module} is listed twice in README's architecture table"
            layer_of[module] = index
    graph = import_graph()
    # Package __init__ files that import nothing (pulse, pulse.io, ...) belong to no layer.
    listed = {module for module, targets in graph.items() if targets or module.count(".") > 1 or module in layer_of}
    listed -= {m for m in ("pulse", "pulse.io", "pulse.solvers", "pulse.generators") if not graph.get(m)}
    assert sorted(listed - set(layer_of)) == [], "modules missing from README's architecture table"
    assert sorted(set(layer_of) - set(graph)) == [], "README's architecture table names modules that do not exist"
    upward = [
        f"{module} (layer {layer_of[module] + 1}) imports {target} (layer {layer_of[target] + 1})"
        for module in layer_of
        for target in graph[module]
        if target in layer_of and layer_of[target] > layer_of[module]
    ]
    assert upward == []
