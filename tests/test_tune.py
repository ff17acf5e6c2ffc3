"""Tuning with equal budgets: the `tune` search spaces, an Optuna study through the local launcher,
and the seed re-run of its best configuration (experiments/rerun_best.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.e2e import REPO_ROOT, TINY_OVERRIDES, read_metrics, run_cli
from tests.test_reproduce_table import load_script

#: Every method of the paper's table and the search space it is tuned over.
STUDIES = {
    "ml100k_fix": ("fix", {"model.lambda_value"}),
    "ml100k_amf": ("amf", {"model.adv_eps", "model.adv_alpha", "model.lambda_value"}),
    "ml100k_neumf": ("neumf", {"model.mlp_layers", "optimizer.lr", "model.lambda_value"}),
    "ml100k_sgda": ("sgda", {"optimizer.lr"}),
    "ml100k_d": ("lambda_opt", {"lambda_optimizer.lr", "granularity.init"}),
    "ml100k_du": ("lambda_opt", {"lambda_optimizer.lr", "granularity.init"}),
    "ml100k_di": ("lambda_opt", {"lambda_optimizer.lr", "granularity.init"}),
    "ml100k_dui": ("lambda_opt", {"lambda_optimizer.lr", "granularity.init"}),
}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", list(STUDIES))
def test_every_method_gets_the_same_study_and_budget(experiment: str) -> None:
    tune, space = STUDIES[experiment]
    cfg = _compose([f"+experiment={experiment}", f"+tune={tune}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == space  # the experiment's own λ grid is replaced, not extended
    for key in space:  # every searched key exists in the composed config
        assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None, key
    # The same trials and epochs for every method.
    assert (sweeper.n_trials, sweeper.n_jobs, sweeper.sampler.seed) == (20, 2, 0)
    assert cfg.trainer.max_epochs == cfg.budget.max_epochs == 400
    assert cfg.eval.monitor == "auc" and cfg.eval.every_n_epochs == 1
    # The same early stopping for every method, on the selection metric.
    stopping = cfg.callbacks.early_stopping
    assert stopping.patience == cfg.budget.patience == 10 and stopping.monitor == "valid/auc"


def test_log_uniform_lambda_space_of_fix() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    def distribution(experiment: str, tune: str, key: str):
        value = _compose([f"+experiment={experiment}", f"+tune={tune}"]).hydra.sweeper.params[key]
        return create_optuna_distribution_from_override(OverridesParser.create().parse_override(f"{key}={value}"))

    lam = distribution("ml100k_fix", "fix", "model.lambda_value")
    assert isinstance(lam, LogUniformDistribution) and (lam.low, lam.high) == (1e-6, 10.0)
    layers = distribution("ml100k_neumf", "neumf", "model.mlp_layers")
    assert isinstance(layers, CategoricalDistribution) and "[128,64,32]" in layers.choices
    assert isinstance(distribution("ml100k_sgda", "sgda", "optimizer.lr"), LogUniformDistribution)


def _fake_study(root: Path, task: list[str], best: dict) -> Path:
    study = root / "study"
    (study / "0" / ".hydra").mkdir(parents=True)
    hydra_yaml = {
        "hydra": {
            "overrides": {
                "hydra": ["hydra/launcher=local", f"hydra.sweep.dir={study}", "hydra.mode=MULTIRUN"],
                "task": task,
            }
        }
    }
    (study / "0" / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra_yaml))
    (study / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": best, "best_value": 0.9})
    )
    return study


def test_rerun_command_keeps_the_study_and_fixes_the_best_params(tmp_path: Path) -> None:
    rerun = load_script("rerun_best")
    study = _fake_study(
        tmp_path,
        [
            "model.mlp_layers=[64,32,16]",
            "optimizer.lr=0.003",
            "+experiment=ml100k_neumf",
            "+tune=neumf",
            "study.n_trials=8",
            "budget.max_epochs=20",
        ],
        {"model.mlp_layers": "[128,64,32]", "optimizer.lr": 0.0021},
    )
    command = rerun.rerun_command(study, "0,1,2", tmp_path / "out", ["control=refit"])
    assert command[1:3] == [str(REPO_ROOT / "run.py"), "-m"]
    assert command[3:] == [
        "+experiment=ml100k_neumf",
        "+budget=equal",
        "budget.max_epochs=20",
        "model.mlp_layers=[128,64,32]",
        "optimizer.lr=0.0021",
        "hydra/launcher=local",
        "seed=0,1,2",
        f"hydra.sweep.dir={tmp_path / 'out' / 'ml100k_neumf'}",
        "control=refit",
    ]
    # An override given to the re-run replaces the study's own (one value per key for Hydra).
    command = rerun.rerun_command(study, "0", tmp_path / "out", ["hydra/launcher=slurm", "budget.max_epochs=30"])
    assert "hydra/launcher=local" not in command and "budget.max_epochs=20" not in command
    assert command[5] == "budget.max_epochs=30" and command[-1] == "hydra/launcher=slurm"  # in the study's place
    assert rerun.main([str(tmp_path / "nothing")]) == 2


def test_rerun_under_another_experiment_replaces_it_and_names_the_folder_after_it(tmp_path: Path) -> None:
    rerun = load_script("rerun_best")
    study = _fake_study(
        tmp_path,
        ["lambda_optimizer.lr=0.1", "+experiment=ml100k_dui", "+tune=lambda_opt"],
        {"lambda_optimizer.lr": 0.02},
    )
    command = rerun.rerun_command(study, "0", tmp_path / "out", ["+experiment=ml100k_d"])
    assert "+experiment=ml100k_dui" not in command and "lambda_optimizer.lr=0.02" in command
    # before +budget=equal, as in the study: the budget's epochs must override the experiment's
    assert command.index("+experiment=ml100k_d") < command.index("+budget=equal")
    assert f"hydra.sweep.dir={tmp_path / 'out' / 'ml100k_d'}" in command


@pytest.mark.slow
def test_optuna_study_through_the_local_launcher_then_rerun_best(tmp_path: Path) -> None:
    """2 trials × 2 parallel jobs (submitit local launcher) of a λFix study on tiny data: each trial's
    objective is its valid AUC, the study keeps the best; rerun_best re-runs it for two seeds."""
    study = tmp_path / "study"
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_epochs")]
    run_cli(
        [
            "-m",
            *tiny,
            "model=fix",
            "+tune=fix",
            "budget.max_epochs=2",
            "study.n_trials=2",
            "study.n_jobs=2",
            "hydra/launcher=local",
            f"hydra.sweep.dir={study}",
        ],
        cwd=tmp_path,
    )
    trials = [read_metrics(study / str(n)) for n in range(2)]
    assert {t["lambda_value"] for t in trials} != {None} and len({t["lambda_value"] for t in trials}) == 2
    assert all(t["best_epoch"] <= 1 for t in trials)  # the budget's 2 epochs
    results = yaml.safe_load((study / "optimization_results.yaml").read_text())
    best = max(trials, key=lambda t: t["valid"]["auc"])
    assert results["best_value"] == pytest.approx(best["valid"]["auc"])
    assert results["best_params"] == {"model.lambda_value": pytest.approx(best["lambda_value"])}
    assert len(list((study / ".submitit").iterdir())) >= 1  # the trials were submitit jobs

    rerun = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "experiments" / "rerun_best.py"),
            str(study),
            "--seeds",
            "0,1",
            "--out",
            str(tmp_path / "best"),
            "hydra/launcher=basic",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(tmp_path / "data")},
    )
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    reruns = [json.loads(p.read_text()) for p in sorted((tmp_path / "best").rglob("metrics.json"))]
    assert sorted(r["seed"] for r in reruns) == [0, 1]
    assert all(r["lambda_value"] == pytest.approx(best["lambda_value"]) for r in reruns)
    seed0 = next(r for r in reruns if r["seed"] == 0)
    assert seed0["valid"] == best["valid"] and seed0["test"] == best["test"]  # the best trial, reproduced
