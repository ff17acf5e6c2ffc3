"""Paths the tests share: the repository root and the real ml-100k copy beside the project."""

from __future__ import annotations

from pathlib import Path

#: The repository root (holds run.py, conf/, lopt/).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: MovieLens-100K's ratings file for real-data tests; they skip when it is absent.
ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"
