"""The package's shape: layers that only import downward, no import cycles, no re-export shims,
names imported from their home.

Every `import` statement counts, including those inside functions: a cycle or an upward import
hidden behind a late import is still one (modules that cannot be understood one without the
other).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "toxjax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}

# The data flow, bottom to top; written once. A module may import its own layer's packages and
# any layer below, never one above. Packages of one layer must not form a loop either.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "toxjax",
        "toxjax.fileio",
        "toxjax.tf_import",
        "toxjax.commands",
        "toxjax.distributed",
        "toxjax.workdir_lock",
    ),
    ("toxjax.datasets",),  # the packaged real and synthetic data
    ("toxjax.model",),
    ("toxjax.scoring",),
    ("toxjax.data",),  # SeqIO tasks, vocabularies, the training input
    ("toxjax.training",),
    ("toxjax.inference",),  # sampling, log-likelihood, request types
    ("toxjax.evaluation",),
    ("toxjax.interop", "toxjax.compile", "toxjax.launch"),
    ("toxjax.study", "toxjax.main", "toxjax.configs", "toxjax.testing"),
)
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """The layer unit of a module: its subpackage (toxjax.data), or a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2])


TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(tree: ast.AST) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every toxjax import in a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module in MODULES and node.level == 0:
            found += [(node.module, a.name, node.lineno) for a in node.names]
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the toxjax modules it imports (a `from pkg import module` counts as module)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, tree in TREES.items():
        for module, imported, _ in _imports(tree):
            submodule = f"{module}.{imported}"
            graph[name].add(submodule if submodule in MODULES else module)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _defined_names(tree: ast.Module) -> set[str]:
    """Names a module defines itself (functions, classes, assignments), not ones it imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def upward_imports(graph: dict[str, set[str]] | None = None) -> list[str]:
    """`file:line: a imports b, a higher layer (i < j)` for every import that goes up."""
    wrong = []
    for name, tree in TREES.items():
        for module, imported, line in _imports(tree):
            submodule = f"{module}.{imported}"
            target = submodule if submodule in MODULES else module
            source, dest = unit_of(name), unit_of(target)
            if LAYER_OF[dest] > LAYER_OF[source]:
                wrong.append(
                    f"{MODULES[name].relative_to(PACKAGE.parent)}:{line}: {source} imports "
                    f"{dest}, a higher layer ({LAYER_OF[source]} < {LAYER_OF[dest]})"
                )
    return wrong


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {unit: set() for unit in LAYER_OF}
    for name, targets in import_graph().items():
        graph[unit_of(name)] |= {unit_of(t) for t in targets} - {unit_of(name)}
    return graph


def test_every_module_has_a_layer():
    assert sorted({unit_of(name) for name in MODULES} - set(LAYER_OF)) == []


def test_imports_only_go_down_the_layers():
    assert upward_imports() == []


def test_the_layer_check_names_an_upward_import(monkeypatch):
    """A late import of training from model is caught and named by file, line and packages."""
    tree = ast.parse("def f():\n    from toxjax.training import train\n")
    monkeypatch.setitem(TREES, "toxjax.model.decoder", tree)
    assert upward_imports() == [
        "toxjax/model/decoder.py:2: toxjax.model imports toxjax.training, a higher layer (2 < 5)"
    ]


def test_packages_form_no_loops():
    assert find_cycles(package_graph()) == []


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"], ["d"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert find_cycles(graph) == []


def _uses(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(module, name, line) for `from toxjax.m import name` and for `m.name` where m is an
    imported toxjax module, in one module."""
    uses, aliases = [], {}
    for module, imported, line in _imports(tree):
        submodule = f"{module}.{imported}"
        if imported is None:
            continue
        if submodule in MODULES:
            aliases[imported] = submodule
        else:
            uses.append((module, imported, line))
    for node in ast.walk(tree):
        if isinstance(node, ast.alias) and node.asname and node.name in aliases:
            aliases[node.asname] = aliases[node.name]
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            uses.append((aliases[node.value.id], node.attr, node.lineno))
    return uses


def test_names_are_imported_from_the_module_that_defines_them():
    """No re-export shims: `from toxjax.a import X` and `a.X` need X defined in toxjax.a."""
    wrong = []
    for name, tree in TREES.items():
        for module, used, line in _uses(tree):
            if f"{module}.{used}" in MODULES or used in _defined_names(TREES[module]):
                continue
            wrong.append(f"{MODULES[name]}:{line}: {used} is not defined in {module}")
    assert wrong == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_level_getattr_or_kept_unused_imports(name):
    source = MODULES[name].read_text()
    tree = TREES[name]
    assert not any(
        isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body
    ), f"{MODULES[name]}: a module __getattr__ forwards names defined elsewhere"
    assert "noqa: F401" not in source, f"{MODULES[name]}: an unused import kept on purpose"


MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def test_no_module_is_over_600_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_is_over_80_lines():
    """From `def` (decorators excluded) to the last line of the body; methods included."""
    long = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{MODULES[name]}:{node.lineno}: {node.name} has {length} lines")
    assert long == []
