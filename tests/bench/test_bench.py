"""experiments/bench.py keeps working: a tiny-shape run writes every key of bench.json, all finite.

Benchmarks are not timed tests; this only checks the script end to end (subprocess, its own
cache directory, no network)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers.cli import REPO_ROOT

BENCH = REPO_ROOT / "experiments" / "bench.py"


def _finite_numbers(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite_numbers(v) for v in value)
    return True


@pytest.mark.slow
def test_bench_tiny_writes_every_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.remove(str(BENCH.parent))
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--shape",
            "tiny",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--threads",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(scratch.glob("lopt-bench-*")), "the runs' checkpoints were left behind"
    result = json.loads(out.read_text())
    missing = [k for k in bench.REQUIRED_KEYS if k not in result]
    assert not missing, f"bench.json lacks {missing}"
    for key in bench.REQUIRED_KEYS:
        if key in ("machine", "shape"):
            assert isinstance(result[key], str) and result[key]
        else:
            assert _finite_numbers(result[key]), (key, result[key])
    numeric = [k for k in bench.REQUIRED_KEYS if k not in ("machine", "shape", "load_avg")]
    for key in numeric:
        assert isinstance(result[key], (int, float)), key
    assert result["shape"] == "tiny"
    assert result["torch_threads"] == 1
    for key in (
        "prep_seconds",
        "sample_seconds_per_epoch",
        "fix_step_seconds",
        "opt_d_step_seconds",
        "opt_dui_step_seconds",
        "opt_dui_adam_step_seconds",
        "eval_seconds",
        "peak_rss_mb",
    ):
        assert result[key] > 0, key
    assert "ratio_dui_over_fix" in proc.stdout  # the printed table
    # the cached data file is reused by a second run (generated once)
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").rglob("ratings.dat"))


def test_popularity_interactions_are_distinct_pairs_in_range() -> None:
    """The large shape's generator: distinct (user, item) pairs, ids in range, every user present,
    close to the requested count, deterministic."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_module", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    frame = bench.popularity_interactions(2000, 5000, 20_000, user_alpha=0.6, item_alpha=0.9)
    assert frame.select(["user", "item"]).is_duplicated().sum() == 0
    assert frame["user"].n_unique() == 2000 and frame["user"].max() == 1999
    assert 0 <= frame["item"].min() and frame["item"].max() < 5000
    assert 0.8 * 20_000 <= frame.height <= 20_000
    assert frame.equals(bench.popularity_interactions(2000, 5000, 20_000, user_alpha=0.6, item_alpha=0.9))
