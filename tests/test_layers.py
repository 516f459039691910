"""Imports only go downward, and no module imports itself round a cycle.

The floors, ground up (docs/architecture.md draws the map). A module may import its own floor or one below,
at the top of the file or lazily inside a function: a lazy import is still a dependency, it only runs later,
so it is held to the same rule. Imports under ``if TYPE_CHECKING:`` never run and are not counted. The
Flower apps (``server``, ``clients``) are on the top floor: the core reaches them only by name, through
``fedcmi/runtime/apps.py`` (as Flower loads the apps that ``[tool.flwr.app.components]`` names).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedcmi", "server", "clients")

# Ground up. A module belongs to the floor of the longest name below that is it or a package above it; the
# root package ``fedcmi`` (its __init__) is ground, its other top-level modules are listed one by one.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("ground: errors, arrays, modality kinds, guidance types, metrics columns, devices, optional packages",
     ("fedcmi.errors", "fedcmi.npy", "fedcmi.modalities", "fedcmi.dominance", "fedcmi.metrics", "fedcmi.devices",
      "fedcmi.extras")),
    ("catalogues: plug-ins by name, as data (no torch)",
     ("fedcmi.methods.spec", "fedcmi.methods.registry", "fedcmi.data.sources", "fedcmi.models.registry")),
    ("config", ("fedcmi.config",)),
    ("data", ("fedcmi.data",)),
    ("models", ("fedcmi.models",)),
    ("methods", ("fedcmi.methods",)),
    ("federated", ("fedcmi.federated",)),
    ("protocol", ("fedcmi.protocol",)),
    ("runs", ("fedcmi.runs",)),
    ("runtime and bench", ("fedcmi.runtime", "fedcmi.bench")),
    ("cli", ("fedcmi.cli",)),
    ("the Flower apps", ("server", "clients")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def floor_of(module: str) -> int:
    if module == "fedcmi":
        return 0
    best, floor = -1, None
    for i, (_, names) in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, floor = len(name), i
    if floor is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/test_layers.py")
    return floor


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, lazy) for every import that runs: top level or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:  # `from fedcmi import protocol` imports the module fedcmi.protocol
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in MODULES else base, child.lineno, lazy))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return [(m, line, lazy) for m, line, lazy in found if m.split(".")[0] in PACKAGES]


EDGES = {m: imports_of(m, p) for m, p in MODULES.items()}


def test_every_module_is_on_a_floor():
    for module in MODULES:
        floor_of(module)


def test_imports_only_go_downward():
    upward = []
    for module, imports in EDGES.items():
        for target, line, lazy in sorted(set(imports)):
            if floor_of(target) > floor_of(module):
                upward.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} ({FLOORS[floor_of(module)][0]}) "
                              f"imports {target} ({FLOORS[floor_of(target)][0]}){' lazily' if lazy else ''}")
    assert not upward, "imports that go upward:\n" + "\n".join(upward)


def test_a_package_above_its_lower_floor_modules_imports_nothing_when_imported():
    """Importing ``fedcmi.methods.registry`` runs ``fedcmi/methods/__init__.py`` first: where a package holds a
    module of a lower floor (the catalogues), its __init__ must not import the package's higher floors."""
    for package in (m for m, p in MODULES.items() if p.name == "__init__.py"):
        lowest = min(floor_of(m) for m in MODULES if m.startswith(package + "."))
        eager = [t for t, _, lazy in EDGES[package] if not lazy and floor_of(t) > lowest]
        assert not eager, f"{package}/__init__.py imports {eager} above its own {FLOORS[lowest][0]} modules"


def test_no_import_cycles():
    graph = {m: sorted({t for t, _, _ in imports if t in MODULES and t != m}) for m, imports in EDGES.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in cycles)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
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

    for v in graph:
        if v not in index:
            connect(v)
    return out


def test_only_the_apps_module_names_the_apps():
    """A module of the core that loaded an app by a string of its own would bypass the floors."""
    apps_module = "fedcmi.runtime.apps"
    found = []
    for module, path in MODULES.items():
        if not module.startswith("fedcmi") or module == apps_module:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.value.split(":")[0] if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if target.split(".")[0] in ("server", "clients") and "." in target and target in MODULES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, f"name the apps through {apps_module}:\n" + "\n".join(found)


def test_the_core_names_the_apps_as_pyproject_does():
    from fedcmi.runtime import apps

    components = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    assert (apps.CLIENT_APP, apps.SERVER_APP) == (components["clientapp"], components["serverapp"])
    for reference in (apps.CLIENT_APP, apps.SERVER_APP, apps.MAKE_SERVER_APP, apps.RUN_SERVER, apps.MAKE_BENCH_APP):
        assert callable(apps.load(reference)) or reference.endswith(":app")


@pytest.mark.parametrize("source, expected", [
    ("import server.app\n", ["server.app"]),
    ("def f():\n    from clients.app import app\n", ["clients.app"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import server.app\n", []),
])
def test_the_checker_sees_top_level_and_lazy_imports_and_skips_type_checking(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert [m for m, _, _ in imports_of("fedcmi.probe", path)] == expected
