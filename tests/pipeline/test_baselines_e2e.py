"""The paper's baselines (SGDA, AMF, NeuMF) end to end through ``python run.py``: tiny synthetic
data through their experiment configs, and a few epochs on the real ml-100k."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import TINY_OVERRIDES, read_metrics, run_cli

METRIC_KEYS = {"auc", "hr@50", "hr@100", "ndcg@50", "ndcg@100"}
BASELINES = {"sgda": "SGDA", "amf": "AMF", "neumf": "NeuMF"}
#: ml-100k: enough epochs to be well above chance while each run stays well under a minute.
ML100K_EPOCHS = 4


def _check_run(run_dir: Path, method: str, dataset: str) -> dict:
    metrics = read_metrics(run_dir)
    assert metrics["method"] == method and metrics["dataset"] == dataset
    assert set(metrics["test"]) == METRIC_KEYS and set(metrics["valid"]) == METRIC_KEYS
    for split in ("test", "valid"):
        assert all(math.isfinite(v) for v in metrics[split].values()), metrics[split]
    assert (run_dir / "per_user_test.parquet").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "lambda.npz").is_file() == (method == "SGDA")  # only SGDA learns Λ
    return metrics


@pytest.mark.slow
def test_every_baseline_experiment_runs_on_tiny_data(tmp_path: Path) -> None:
    """One multirun over the three ml100k baseline experiments, with the tiny overrides on top."""
    sweep = tmp_path / "sweep"
    experiments = ",".join(f"ml100k_{name}" for name in BASELINES)
    run_cli(["-m", f"+experiment={experiments}", *TINY_OVERRIDES, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    found = {}
    for job in range(len(BASELINES)):
        metrics = read_metrics(sweep / str(job))
        found[metrics["model"]] = _check_run(sweep / str(job), metrics["method"], "synthetic")
    assert {m: v["method"] for m, v in found.items()} == BASELINES
    lam = np.load(sweep / "0" / "lambda.npz")  # job 0 = SGDA: Rendle's dsep Λ, ≥ 0
    assert str(lam["granularity"]) == "dsep"
    assert (lam["user_lambda"] >= 0).all() and lam["user_lambda"].shape == (found["sgda"]["n_users"], 8)
    assert (lam["user_lambda"] == lam["user_lambda"][0]).all()  # one R^d shared by all users


@pytest.fixture(scope="module")
def ml100k_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory (and prepared-split cache) for all ml-100k baseline runs."""
    return tmp_path_factory.mktemp("baselines_ml100k")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_learns_on_ml100k(name: str, ml100k_path: Path, ml100k_workdir: Path) -> None:
    run_dir = ml100k_workdir / name
    # AMF: Adam at lr 1e-3 (its experiment) needs ~10 epochs to leave chance on ml-100k; a 10× lr
    # gets there in the few epochs a test can afford. The adversary runs for the last 2 epochs.
    extra = ["model.pretrain_epochs=2", "optimizer.lr=1e-2"] if name == "amf" else []
    run_cli(
        [
            f"+experiment=ml100k_{name}",
            f"dataset.source.path={ml100k_path}",
            f"trainer.max_epochs={ML100K_EPOCHS}",
            "logger=none",
            *extra,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ml100k_workdir,
    )
    metrics = _check_run(run_dir, BASELINES[name], "ml100k")
    assert metrics["n_users"] == 943 and metrics["n_items"] == 1682
    assert metrics["valid"]["auc"] > 0.75, metrics["valid"]
    assert metrics["test"]["auc"] > 0.75, metrics["test"]
