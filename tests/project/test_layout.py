"""The package layout of docs/layout.md: each package imports only from the layers above it, and
no import circle exists in lopt/ (imports inside functions and under TYPE_CHECKING count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

LOPT = REPO_ROOT / "lopt"

#: docs/layout.md's layers, top (imports nothing of lopt) to bottom.
LAYERS: list[set[str]] = [
    {"types", "io"},
    {"data"},
    {"eval"},
    {"models"},
    {"optim"},
    {"lookahead"},
    {"modules"},
    {"tracking"},
    {"run"},
    {"pipeline"},
    {"api", "recommend"},
    {"analysis", "sweep"},
    {"cli"},  # the `lopt` command: every job users run
    {"__init__", "__main__"},  # the package facade (`from lopt import train`) and `python -m lopt`
]
#: Layers a package may import besides its own, by docs/layout.md (a subset of those above it).
ALLOWED: dict[str, set[str]] = {
    "types": set(),
    "io": set(),
    "data": {"types", "io"},
    "eval": {"types", "io"},
    "models": {"types", "io"},
    "optim": {"types", "io", "models"},
    "lookahead": {"types", "io", "models", "optim"},
    "modules": {"types", "io", "eval", "models", "optim", "lookahead"},
    "tracking": {"types", "io", "eval", "models"},
    "run": {"types", "io", "data", "eval", "tracking"},
    "analysis": {"types", "io", "data", "tracking"},
    "sweep": {"types", "io"},
}


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, modules: set[str], root: Path = REPO_ROOT) -> set[str]:
    """The lopt modules ``path`` imports anywhere in its body (relative imports resolved)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != me:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(f): f for f in LOPT.rglob("*.py")}
    return {m: imported_modules(f, set(files)) for m, f in files.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_is_on_a_layer() -> None:
    on_layers = set().union(*LAYERS)
    packages = {package_of(m) for m in import_graph()}
    assert packages <= on_layers, f"packages missing from docs/layout.md's layers: {sorted(packages - on_layers)}"


def test_imports_go_only_to_layers_above() -> None:
    rank = {p: i for i, layer in enumerate(LAYERS) for p in layer}
    wrong = []
    for module, targets in import_graph().items():
        src = package_of(module)
        for target in targets:
            dst = package_of(target)
            if dst == src:
                continue
            if rank[dst] >= rank[src] or (src in ALLOWED and dst not in ALLOWED[src]):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against docs/layout.md's layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize(
    "source, circle",
    [
        ("from lopt.b import x\n", "from lopt.a import y\n"),
        ("def f():\n    from lopt.b import x\n", "from lopt import a\n"),
    ],
)
def test_circle_detection_sees_module_level_and_local_imports(tmp_path: Path, source: str, circle: str) -> None:
    pkg = tmp_path / "lopt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(source)
    (pkg / "b.py").write_text(circle)
    files = {"lopt", "lopt.a", "lopt.b"}
    assert "lopt.b" in imported_modules(pkg / "a.py", files, tmp_path)
    assert "lopt.a" in imported_modules(pkg / "b.py", files, tmp_path)
