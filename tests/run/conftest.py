"""Fixtures of the run-lifecycle tests."""

from __future__ import annotations

import pytest

from tests.helpers.cli import read_metrics, run_cli
from tests.helpers.faults import RUN


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run every interrupted-and-resumed run must reproduce."""
    root = tmp_path_factory.mktemp("straight")
    run_cli([*RUN, f"hydra.run.dir={root / 'run'}"], cwd=root)
    return read_metrics(root / "run")
