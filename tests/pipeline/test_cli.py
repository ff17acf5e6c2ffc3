"""End-to-end runs through the real CLI (``python run.py``) on tiny synthetic data and ml-100k."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.helpers.cli import TINY_OVERRIDES, read_metrics, run_cli

METRIC_KEYS = {"auc", "hr@50", "hr@100", "ndcg@50", "ndcg@100"}
GRANULARITIES = ["d", "du", "di", "dui", "global", "u", "i", "ui", "dsep"]


def _assert_results(run_dir: Path) -> dict:
    metrics = read_metrics(run_dir)
    assert set(metrics["test"]) == METRIC_KEYS and set(metrics["valid"]) == METRIC_KEYS
    for split in ("test", "valid"):
        assert all(math.isfinite(v) for v in metrics[split].values()), metrics[split]
    for key in ("best_epoch", "model", "granularity", "dataset", "seed", "train_seconds"):
        assert key in metrics
    per_user = pl.read_parquet(run_dir / "per_user_test.parquet")
    assert {"user", "raw_user_id", "train_frequency", *METRIC_KEYS} <= set(per_user.columns)
    assert per_user["auc"].drop_nans().mean() == pytest.approx(metrics["test"]["auc"], rel=1e-6)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    return metrics


@pytest.mark.slow
def test_default_job_tiny(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY_OVERRIDES, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    metrics = _assert_results(run_dir)
    assert metrics["method"] == "MF-λOpt-DUI" and metrics["dataset"] == "synthetic"
    assert f"outputs: {run_dir}" in proc.stdout and "auc" in proc.stdout
    lam = np.load(run_dir / "lambda.npz")
    assert lam["user_lambda"].shape == (metrics["n_users"], 8)
    assert lam["item_lambda"].shape == (metrics["n_items"], 8)
    assert (lam["user_lambda"] >= 0).all() and (lam["item_lambda"] >= 0).all()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        run_cli([*TINY_OVERRIDES, "seed=5", f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path)
        runs.append(read_metrics(tmp_path / name))
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["valid"] == runs[1]["valid"]
    run_cli([*TINY_OVERRIDES, "seed=6", f"hydra.run.dir={tmp_path / 'c'}"], cwd=tmp_path)
    assert read_metrics(tmp_path / "c")["test"] != runs[0]["test"]


@pytest.mark.slow
def test_fix_multirun_two_lambdas(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_cli(
        ["-m", *TINY_OVERRIDES, "model=fix", "model.dim=8", "model.lambda_value=0,0.01", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    found = sorted(
        (read_metrics(sweep / str(n))["lambda_value"], read_metrics(sweep / str(n))["method"]) for n in (0, 1)
    )
    assert found == [(0.0, "MF-λFix"), (0.01, "MF-λFix")]
    for n in (0, 1):
        _assert_results(sweep / str(n))
        assert not (sweep / str(n) / "lambda.npz").exists()


@pytest.mark.slow
def test_every_granularity_end_to_end(tmp_path: Path) -> None:
    """One multirun (one process, the basic launcher) over all eight granularities."""
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            *TINY_OVERRIDES,
            f"granularity={','.join(GRANULARITIES)}",
            "granularity.init=0.01",
            "lambda_optimizer.lr=0.5",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    for n, name in enumerate(GRANULARITIES):
        metrics = _assert_results(sweep / str(n))
        assert metrics["granularity"] == name
        lam = np.load(sweep / str(n) / "lambda.npz")
        both = np.concatenate([lam["user_lambda"].ravel(), lam["item_lambda"].ravel()])
        assert (both >= 0).all()
        assert not np.allclose(both, 0.01), f"Λ of {name} never moved from its init"


@pytest.mark.slow
def test_compiled_lookahead_end_to_end(tmp_path: Path) -> None:
    """model.compile_lookahead=true through run.py (Lightning, deterministic CPU kernels, Θ clip
    configured): the same run as with the eager kernels, up to float rounding, and no fallback."""
    metrics, lambdas = {}, {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        run_dir = tmp_path / name
        proc = run_cli([*TINY_OVERRIDES, f"model.compile_lookahead={flag}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert "torch.compile of the look-ahead kernel" not in proc.stdout + proc.stderr
        metrics[name] = _assert_results(run_dir)
        lambdas[name] = np.load(run_dir / "lambda.npz")["user_lambda"]
    assert metrics["compiled"]["best_epoch"] == metrics["eager"]["best_epoch"]
    for split in ("valid", "test"):
        for key in METRIC_KEYS:
            assert metrics["compiled"][split][key] == pytest.approx(metrics["eager"][split][key], abs=1e-4), (
                split,
                key,
            )
    assert lambdas["eager"].max() > 0  # Λ was learned, so the kernels mattered
    np.testing.assert_allclose(lambdas["compiled"], lambdas["eager"], rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_experiment_with_tiny_overrides(tmp_path: Path) -> None:
    """`+experiment=` composes with the dataset/model overrides a user would add."""
    run_dir = tmp_path / "run"
    run_cli(["+experiment=ml100k_du", *TINY_OVERRIDES, "model.dim=8", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    metrics = _assert_results(run_dir)
    assert metrics["method"] == "MF-λOpt-DU"


@pytest.mark.slow
def test_non_finite_loss_stops_with_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            *TINY_OVERRIDES,
            "model=fix",
            "trainer.max_epochs=6",
            "optimizer=sgd",
            "optimizer.lr=1e30",
            "model.grad_clip_norm=null",
            "model.init_std=1.0",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "non-finite training loss" in proc.stderr and "global step" in proc.stderr
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_ml100k_fix_learns(tmp_path: Path, ml100k_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_cli(
        [
            "+experiment=ml100k_fix",
            f"dataset.source.path={ml100k_path}",
            "trainer.max_epochs=10",
            "model.dim=32",
            "logger=none",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    metrics = _assert_results(run_dir)
    assert metrics["n_users"] == 943 and metrics["dataset"] == "ml100k"
    assert metrics["valid"]["auc"] > 0.8


@pytest.mark.slow
def test_fix_experiment_sweeps_the_paper_grid_by_default(tmp_path: Path) -> None:
    """`-m +experiment=<dataset>_fix` with no λ given runs the paper's 8-value grid."""
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            "+experiment=ml100k_fix",
            *TINY_OVERRIDES,
            "model.dim=8",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    runs = [read_metrics(p.parent) for p in sweep.glob("*/metrics.json")]
    assert sorted(m["lambda_value"] for m in runs) == [0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10]
    assert {m["dataset"] for m in runs} == {"synthetic"}  # command-line groups win over the experiment's


@pytest.mark.slow
def test_skipping_the_memory_fill_of_deterministic_mode_changes_no_metric(tmp_path: Path) -> None:
    """determinism.fill_uninitialized_memory=false (the default) only skips torch's fill of new
    tensors: no kernel reads unwritten memory, so a λOpt-DUI run gives the same metrics with it."""
    runs = []
    for fill in ("false", "true"):
        run_dir = tmp_path / fill
        run_cli(
            [*TINY_OVERRIDES, f"determinism.fill_uninitialized_memory={fill}", f"hydra.run.dir={run_dir}"], cwd=tmp_path
        )
        runs.append(read_metrics(run_dir))
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["valid"] == runs[1]["valid"]


def test_apply_determinism_sets_torchs_fill_flag() -> None:
    import torch
    from omegaconf import OmegaConf

    from lopt.pipeline import apply_determinism

    before = torch.utils.deterministic.fill_uninitialized_memory
    try:
        for fill in (True, False):
            apply_determinism(OmegaConf.create({"determinism": {"fill_uninitialized_memory": fill}}))
            assert torch.utils.deterministic.fill_uninitialized_memory is fill
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = before
