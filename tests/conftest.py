"""Shared fixtures. W&B never reaches a server from the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """The real MovieLens-100K ratings (never committed: read from ../shared/data)."""
    if not SHARED_ML100K.is_file():
        pytest.skip(f"ml-100k not available at {SHARED_ML100K} (the shared data folder is absent)")
    return SHARED_ML100K
