"""Import a script of experiments/ as a module."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.helpers.paths import REPO_ROOT


def load_script(name: str) -> ModuleType:
    """Import ``experiments/<name>.py`` as a module."""
    path = REPO_ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
