"""The Makefile: its choice of Python (python3.11, else python3 when it is 3.11, else uv, else a
stop that says what to install; an explicit PYTHON= may be any Python >= 3.11), with fake
interpreters on a PATH that holds nothing else; and its install steps, torch first, everything
from the lock .ci/constraints.txt (read with make -n, which runs nothing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _fake(bin_dir: Path, name: str, version: str) -> None:
    """An executable that answers the Makefile's version checks as a Python ``version`` would:
    ``sys.exit(sys.version_info[:2] != (3, 11))`` and ``sys.exit(sys.version_info[:2] < (3, 11))``."""
    minor = tuple(int(x) for x in version.split(".")[:2])
    is_311 = 0 if minor == (3, 11) else 1
    too_old = 1 if minor < (3, 11) else 0
    script = bin_dir / name
    script.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *"!= (3, 11)"*) exit {is_311};; *"< (3, 11)"*) exit {too_old};; esac\n'
        f'echo "Python {version}"\n'
    )
    script.chmod(0o755)


def _make(
    tmp_path: Path, target: str, fakes: dict[str, str], *args: str, without: str | None = None
) -> subprocess.CompletedProcess:
    """``make -s TARGET ARGS`` in a copy of the Makefile, pyproject.toml and the lock (less the
    file ``without``), with only the ``fakes`` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, version in fakes.items():
        _fake(bin_dir, name, version)
    work = tmp_path / "repo"
    work.mkdir(exist_ok=True)
    for name in ("Makefile", "pyproject.toml", ".ci/constraints.txt"):
        if name == without:
            continue
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, work / name)
    return subprocess.run(
        [MAKE, "-s", target, *args], cwd=work, env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_python3_of_another_version_stops_with_what_to_install(tmp_path: Path) -> None:
    proc = _make(tmp_path, "setup", {"python3": "3.10.12"})
    assert proc.returncode != 0
    assert "lopt is tested on Python 3.11" in proc.stderr and "uv" in proc.stderr and "PYTHON=" in proc.stderr
    assert not (tmp_path / "repo" / ".venv").exists()  # stopped before creating anything


@pytest.mark.parametrize(
    ("fakes", "chosen"),
    [
        ({"python3": "3.11.9"}, "python3"),
        ({"python3": "3.12.1", "python3.11": "3.11.9"}, "python3.11"),
        ({"python3": "3.12.1", "uv": "0.0.0"}, "uv"),
        ({"python3": "3.10.12"}, "none"),
    ],
)
@pytest.mark.slow
def test_choice_of_interpreter(tmp_path: Path, fakes: dict[str, str], chosen: str) -> None:
    proc = _make(tmp_path, "which-python", fakes)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == chosen


@pytest.mark.slow
def test_explicit_python_may_be_any_supported_one(tmp_path: Path) -> None:
    proc = _make(tmp_path, "which-python", {"py310": "3.10.12"}, "PYTHON=py310")
    assert proc.returncode != 0 and "not a Python >= 3.11" in proc.stderr
    for name, version in {"py311": "3.11.9", "py312": "3.12.1", "py313": "3.13.0"}.items():
        ok = _make(tmp_path, "which-python", {name: version}, f"PYTHON={name}")
        assert ok.returncode == 0 and ok.stdout.strip() == name, ok.stderr


def _setup_commands(tmp_path: Path, *args: str) -> list[str]:
    """The commands `make setup` would run (make -n), one per line."""
    proc = _make(tmp_path, "setup", {"python3.11": "3.11.9"}, "-n", *args)
    assert proc.returncode == 0, proc.stderr
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_setup_installs_torch_first_then_the_project_from_the_lock(tmp_path: Path) -> None:
    commands = _setup_commands(tmp_path)
    installs = [c for c in commands if " install " in c and "--upgrade pip" not in c]
    assert len(installs) == 2, commands
    torch, project = installs
    assert torch.endswith("-c .ci/constraints.txt torch"), f"torch first, at its locked version: {torch}"
    assert project.endswith("-c .ci/constraints.txt -e '.[dev]'"), f"then lopt, from the lock: {project}"
    assert not any("==" in c for c in installs), f"versions come from the lock, not the Makefile: {installs}"


@pytest.mark.slow
def test_torch_index_is_an_extra_index_for_torch_only(tmp_path: Path) -> None:
    index = "https://download.pytorch.org/whl/cpu"
    installs = [c for c in _setup_commands(tmp_path, f"TORCH_INDEX={index}") if " install " in c]
    torch = [c for c in installs if c.endswith(" torch")]
    assert torch and f"--extra-index-url {index}" in torch[0]
    assert not any(index in c for c in installs if c not in torch)


@pytest.mark.slow
def test_setup_without_the_lock_stops(tmp_path: Path) -> None:
    """A checkout missing the lock cannot install an untested set."""
    proc = _make(tmp_path, "setup", {"python3.11": "3.11.9"}, "-n", without=".ci/constraints.txt")
    assert proc.returncode != 0 and ".ci/constraints.txt" in proc.stderr
