"""experiments/metrics_change.py: the comparison it records, and a real run of it."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers.paths import ML100K, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "experiments"))
try:
    import metrics_change
finally:
    sys.path.remove(str(REPO_ROOT / "experiments"))


def test_compare_records_the_largest_difference_and_the_identical_keys() -> None:
    before = {"valid/auc": 0.9, "test/auc": 0.8, "test/hr@50": 0.1}
    after = {"valid/auc": 0.9, "test/auc": 0.8000003, "test/hr@50": 0.1000001}
    run = metrics_change.compare(before, after)
    assert run["max_abs_difference"] == pytest.approx(3e-7)
    assert run["keys_identical"] == ["valid/auc"]
    assert run["before"]["test/auc"] == 0.8 and run["after"]["test/auc"] == 0.8000003


def test_compare_refuses_runs_with_different_metrics() -> None:
    with pytest.raises(ValueError, match="different metrics"):
        metrics_change.compare({"valid/auc": 0.9}, {"valid/auc": 0.9, "test/auc": 0.8})


@pytest.mark.slow
def test_the_same_checkout_twice_changes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Same code, same seed, same machine: every metric identical (the runs are reproducible)."""
    if not ML100K.is_file():
        pytest.skip(f"real-data test: {ML100K} is absent (MovieLens-100K is not redistributed)")
    out = tmp_path / "change.json"
    metrics_change.main([str(REPO_ROOT), str(REPO_ROOT), "--data", str(ML100K), "--methods", "d", "--epochs", "1",
                         "--out", str(out)])  # fmt: skip
    record = json.loads(out.read_text(encoding="utf-8"))
    run = record["runs"]["d"]
    assert run["max_abs_difference"] == 0.0
    assert len(run["keys_identical"]) == len(run["before"]) >= 10
    assert record["before_commit"] == record["after_commit"]
