"""Shared fixtures. W&B never reaches a server from the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.finished_runs import make_finished_runs
from tests.helpers.paths import ML100K

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """The real MovieLens-100K ratings (never committed: read from ../shared/data)."""
    if not ML100K.is_file():
        pytest.skip(f"ml-100k not available at {ML100K} (the shared data folder is absent)")
    return ML100K


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder with λFix (λ ∈ {0, 0.01}) and λOpt (DUI, DU) runs, seeds 0 and 1, made
    once per session (tests/helpers/finished_runs.py)."""
    return make_finished_runs(tmp_path_factory.getbasetemp())
