"""Helpers for end-to-end tests through the real CLI (``python run.py …``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO_ROOT

#: Overrides that make any run tiny (conf/debug/tiny.yaml): a small synthetic dataset, a small
#: model, 2 epochs, no logger; later overrides still win.
TINY_OVERRIDES = ["+debug=tiny"]


def run_cli(
    args: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python run.py ARGS`` from ``cwd`` (data cache under cwd); raise with output on failure."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(cwd / "data"), **(env or {})}
    full_env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"run.py {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def read_metrics(run_dir: Path) -> dict:
    """The run's metrics.json."""
    return json.loads((run_dir / "metrics.json").read_text())
