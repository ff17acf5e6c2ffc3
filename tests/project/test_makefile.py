"""The Makefile's choice of Python: python3.11, else python3 when it is 3.11, else uv, else a stop
that says what to install. Fake interpreters on a PATH that holds nothing else."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _fake(bin_dir: Path, name: str, version: str) -> None:
    """An executable that answers the version check as a Python ``version`` would."""
    ok = 0 if version.startswith("3.11.") else 1
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\ncase "$*" in *version_info*) exit {ok};; esac\necho "Python {version}"\n')
    script.chmod(0o755)


def _make(tmp_path: Path, target: str, fakes: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, version in fakes.items():
        _fake(bin_dir, name, version)
    work = tmp_path / "repo"
    work.mkdir(exist_ok=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, work / name)
    return subprocess.run(
        [MAKE, "-s", target, *args], cwd=work, env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_python3_of_another_version_stops_with_what_to_install(tmp_path: Path) -> None:
    proc = _make(tmp_path, "setup", {"python3": "3.10.12"})
    assert proc.returncode != 0
    assert "lopt needs Python 3.11" in proc.stderr and "uv" in proc.stderr and "PYTHON=" in proc.stderr
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
def test_explicit_python_must_be_311(tmp_path: Path) -> None:
    proc = _make(tmp_path, "which-python", {"py310": "3.10.12"}, "PYTHON=py310")
    assert proc.returncode != 0 and "not a Python 3.11" in proc.stderr
    ok = _make(tmp_path, "which-python", {"py311": "3.11.9"}, "PYTHON=py311")
    assert ok.stdout.strip() == "py311"
