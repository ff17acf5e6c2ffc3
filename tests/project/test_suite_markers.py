"""Every test that starts a subprocess (run.py through run_cli, or subprocess/pty directly, itself,
through a helper of its module, or through a fixture) is marked slow, so `-m "not slow"` stays an
in-process suite."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.paths import REPO_ROOT

#: The test helpers that start a process (tests/helpers/cli.py, finished_runs.py).
HELPERS = {"run_cli", "make_finished_runs", "made_once"}
#: Calls of those modules that start a process.
SPAWNING = {"run", "Popen", "check_call", "check_output", "call", "fork", "spawn", *HELPERS}
SPAWNING_MODULES = {"subprocess", "pty", "os"}
#: Shared fixtures (tests/conftest.py) that start processes.
SPAWNING_FIXTURES = {"finished_runs"}


def _called_names(node: ast.AST) -> set[str]:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            if isinstance(f, ast.Name):
                names.add(f.id)
            elif isinstance(f, ast.Attribute):
                base = f.value.id if isinstance(f.value, ast.Name) else ""
                names.add(f"{base}.{f.attr}")
    return names


def _spawns_directly(names: set[str]) -> bool:
    for name in names:
        base, _, attr = name.rpartition(".")
        if (not base and attr in HELPERS) or (base in SPAWNING_MODULES and attr in SPAWNING):
            return True
    return False


def _is_slow(fn: ast.FunctionDef, module_slow: bool) -> bool:
    if module_slow:
        return True
    return any("slow" in ast.unparse(d) for d in fn.decorator_list)


def unmarked_spawning_tests(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """The test functions of ``path`` that start a process and are not marked slow."""
    tree = ast.parse(path.read_text())
    module_slow = any(
        isinstance(n, ast.Assign)
        and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
        and "slow" in ast.unparse(n.value)
        for n in tree.body
    )
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    calls = {name: _called_names(fn) for name, fn in functions.items()}
    spawning = {name for name, names in calls.items() if _spawns_directly(names)}
    spawning |= SPAWNING_FIXTURES
    changed = True
    while changed:  # functions (and fixtures) that reach a spawning one by name
        changed = False
        for name, fn in functions.items():
            if name in spawning:
                continue
            args = {a.arg for a in fn.args.args}
            if calls[name] & spawning or {n.rpartition(".")[2] for n in calls[name]} & spawning or args & spawning:
                spawning.add(name)
                changed = True
    return [
        f"{path.relative_to(root)}::{name}"
        for name, fn in functions.items()
        if name.startswith("test_") and name in spawning and not _is_slow(fn, module_slow)
    ]


def test_every_subprocess_test_is_marked_slow() -> None:
    unmarked = [t for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")) for t in unmarked_spawning_tests(path)]
    assert not unmarked, "start a process but are not marked @pytest.mark.slow:\n" + "\n".join(unmarked)


def test_the_check_sees_direct_helper_and_fixture_spawns(tmp_path: Path) -> None:
    source = tmp_path / "tests" / "test_x.py"
    source.parent.mkdir()
    source.write_text(
        "import subprocess\nimport pytest\n"
        "def _helper():\n    subprocess.run(['true'])\n"
        "def test_direct():\n    subprocess.run(['true'])\n"
        "def test_via_helper():\n    _helper()\n"
        "def test_via_fixture(finished_runs):\n    pass\n"
        "@pytest.mark.slow\ndef test_marked():\n    run_cli([])\n"
        "def test_in_process():\n    assert True\n"
    )
    found = unmarked_spawning_tests(source, tmp_path)
    assert sorted(t.split("::")[1] for t in found) == ["test_direct", "test_via_fixture", "test_via_helper"]
