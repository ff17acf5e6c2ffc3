"""Tuning with equal budgets: the `tune` search spaces, lopt's Optuna study sweeper (stored, resumable
studies through the local launcher), and the seed re-run of a study's best configuration
(experiments/rerun_best.py, which reads the study from its storage)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES, read_metrics, run_cli
from tests.helpers.hydra import compose_config
from tests.helpers.scripts import load_script

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


@pytest.mark.parametrize("experiment", list(STUDIES))
def test_every_method_gets_the_same_study_and_budget(experiment: str) -> None:
    tune, space = STUDIES[experiment]
    cfg = compose_config([f"+experiment={experiment}", f"+tune={tune}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lopt_sweeper.LoptSweeper" and sweeper.monitor == cfg.eval.monitor
    assert set(sweeper.params) == space  # the experiment's own λ grid is replaced, not extended
    for key in space:  # every searched key exists in the composed config
        assert OmegaConf.select(cfg, key, throw_on_missing=True) is not None, key
    # The same trials and epochs for every method; each study its own seed (from its name).
    study = cfg.study
    assert (study.n_trials, study.n_jobs, study.n_startup_trials, study.seed) == (20, 2, 10, None)
    assert study.n_startup_trials < study.n_trials and study.storage == "sqlite"
    assert cfg.trainer.max_epochs == cfg.budget.max_epochs == 400
    assert cfg.eval.monitor == "auc" and cfg.eval.every_n_epochs == 1
    # The same early stopping for every method, on the selection metric.
    stopping = cfg.callbacks.early_stopping
    assert stopping.patience == cfg.budget.patience == 10 and stopping.monitor == "valid/auc"


def test_search_spaces_become_optuna_distributions() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from lopt.sweep.study import search_space

    def space(experiment: str, tune: str, arguments=()):
        params = compose_config(
            [f"+experiment={experiment}", f"+tune={tune}"], return_hydra_config=True
        ).hydra.sweeper.params
        return search_space({str(k): str(v) for k, v in params.items()}, list(arguments))

    lam = space("ml100k_fix", "fix")[0]["model.lambda_value"]
    assert lam == FloatDistribution(1e-6, 10.0, log=True)
    layers = space("ml100k_neumf", "neumf")[0]["model.mlp_layers"]
    assert isinstance(layers, CategoricalDistribution) and "[128,64,32]" in layers.choices
    # a sweep on the command line joins the space; a fixed value of a searched key is dropped
    found, fixed = space("ml100k_sgda", "sgda", ["data.batch_size=range(256,1025,256)", "optimizer.lr=3", "seed=1"])
    assert found["data.batch_size"] == IntDistribution(256, 1024, step=256)
    assert found["optimizer.lr"] == FloatDistribution(1.0, 1000.0, log=True) and fixed == ["seed=1"]


def test_study_name_seed_and_storage() -> None:
    from lopt.sweep.study import default_study_name, storage_url, study_seed

    name = default_study_name(["+experiment=ml100k_fix", "+tune=fix", "seed=1", "budget.max_epochs=20"])
    # the same command names the same study, whatever the order, trial count or jobs at once
    assert name == default_study_name(
        ["budget.max_epochs=20", "+tune=fix", "study.n_trials=40", "seed=1", "+experiment=ml100k_fix"]
    )
    assert name.startswith("ml100k_fix-fix-") and name != default_study_name(["+experiment=ml100k_fix", "+tune=fix"])
    assert default_study_name(["+experiment=ml100k_fix", "+tune=fix"]) == "ml100k_fix-fix"
    assert study_seed("a", None) != study_seed("b", None) and study_seed("a", 7) == 7
    assert storage_url("sqlite", Path("/s/x")) == "sqlite:////s/x/study.db"
    assert storage_url("journal", Path("/s/x")) == "/s/x/study.journal"
    assert storage_url("postgresql://u@h/db", Path("/s/x")) == "postgresql://u@h/db"
    with pytest.raises(ValueError, match="study.storage='mysql'"):
        storage_url("mysql", Path("/s/x"))


def _fake_study(root: Path, task: list[str], best: dict) -> Path:
    """A study stored as the sweeper stores one: SQLite in <dir>/study.db, named in study.yaml, its
    command line in its user attributes, a worse and a best completed trial."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study_dir = root / "study"
    study_dir.mkdir(parents=True)
    url = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.set_user_attr("overrides", task)
    study.set_user_attr("hydra_overrides", ["hydra/launcher=local"])
    space = {
        k: CategoricalDistribution([v, "[1]"]) if isinstance(v, str) else FloatDistribution(1e-6, 1.0, log=True)
        for k, v in best.items()
    }
    worse = {k: "[1]" if isinstance(v, str) else v / 2 for k, v in best.items()}
    for params, value in ((worse, 0.5), (best, 0.9)):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    (study_dir / "study.yaml").write_text(yaml.safe_dump({"name": "s", "storage": url}))
    return study_dir


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
    assert rerun.main([str(tmp_path / "nothing")]) == 2  # no study.yaml


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


def _summary(study_dir: Path) -> list[dict[str, str]]:
    path = study_dir / "study_summary.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


@pytest.mark.slow
def test_study_killed_mid_way_resumes_with_the_same_command_then_rerun_best(tmp_path: Path) -> None:
    """A 4-trial λFix study, 2 trials at a time through the local launcher, SIGKILLed (driver and
    jobs) during its second batch, then run again with the same command: the finished trials are
    kept as they were, the interrupted ones re-run with their parameters, the study ends with 4
    counted trials and a complete summary, and it opens with optuna's own API. A third run of the
    command runs nothing; rerun_best.py reproduces the best trial from the stored study."""
    import optuna

    tiny = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_epochs")]
    args = [
        "-m",
        *tiny,
        "model=fix",
        "+tune=fix",
        "budget.max_epochs=2",
        "study.n_trials=4",
        "study.n_jobs=2",
        "study.n_startup_trials=2",
        "hydra/launcher=local",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(tmp_path / "data")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with (tmp_path / "driver.log").open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "run.py"), *args],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and driver.poll() is None:  # batch 1 told, batch 2 running
            dirs = list((tmp_path / "studies").glob("*/2/.hydra"))
            if dirs and sum(r["state"] == "COMPLETE" for r in _summary(dirs[0].parent.parent)) == 2:
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its jobs, as a closed laptop would
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    (study_dir,) = (tmp_path / "studies").iterdir()
    before = {r["trial"]: r for r in _summary(study_dir) if r["state"] == "COMPLETE"}
    assert sorted(before) == ["0", "1"]
    mtimes = {n: (study_dir / n / "metrics.json").stat().st_mtime_ns for n in before}

    run_cli(args, cwd=tmp_path)  # the same command resumes the study

    rows = {r["trial"]: r for r in _summary(study_dir)}
    assert sorted(rows) == ["0", "1", "2", "3", "4", "5"]
    for n in ("0", "1"):  # kept as they were, not re-run
        assert rows[n]["state"] == "COMPLETE" and rows[n]["valid/auc"] == before[n]["valid/auc"]
        assert (study_dir / n / "metrics.json").stat().st_mtime_ns == mtimes[n]
    assert rows["2"]["state"] == rows["3"]["state"] == "FAIL (interrupted)"
    for retry, of in (("4", "2"), ("5", "3")):  # the interrupted trials' parameters, run again
        assert rows[retry]["state"] == "COMPLETE" and rows[retry]["retry_of"] == of
        assert rows[retry]["model.lambda_value"] == rows[of]["model.lambda_value"]
        assert rows[retry]["run_dir"] == str(study_dir / retry)
        metrics = read_metrics(study_dir / retry)
        assert metrics["lambda_value"] == pytest.approx(float(rows[retry]["model.lambda_value"]))
        assert metrics["valid"]["auc"] == pytest.approx(float(rows[retry]["valid/auc"]))
        # a study's trials keep their best checkpoint only (checkpoint.keep=auto in a multirun)
        assert sorted(p.name for p in (study_dir / retry / "checkpoints").iterdir()) == ["best.ckpt"]
    complete = [r for r in rows.values() if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: float(r["valid/auc"]))
    assert [r["trial"] for r in rows.values() if r["best"] == "★"] == [best["trial"]]
    md = (study_dir / "study_summary.md").read_text()
    assert "**valid/auc**" in md and f"Best: trial {best['trial']} ★" in md
    # the jobs' summary: every job that started (a killed one may not have), its logs linked
    jobs = {r["job"]: r for r in csv.DictReader((study_dir / "sweep_summary.csv").open())}
    assert {n: jobs[n]["status"] for n in ("0", "1", "4", "5")} == dict.fromkeys(("0", "1", "4", "5"), "COMPLETED")
    assert all(jobs[n]["status"] == "no result" for n in ("2", "3") if n in jobs)
    assert all(Path(p).is_file() for p in jobs["4"]["logs"].split()) and "run.log" in jobs["4"]["logs"]

    # The stored study, through optuna's own API.
    info = yaml.safe_load((study_dir / "study.yaml").read_text())
    assert info["storage"] == f"sqlite:///{study_dir / 'study.db'}" and info["metric"] == "valid/auc"
    study = optuna.load_study(study_name=study_dir.name, storage=info["storage"])
    assert len(study.trials) == 6 and study.best_trial.number == int(best["trial"])
    assert study.best_value == pytest.approx(float(best["valid/auc"]))
    assert study.user_attrs["metric"] == "valid/auc"

    # A finished study runs no trial.
    run_cli(args, cwd=tmp_path)
    assert len(optuna.load_study(study_name=study_dir.name, storage=info["storage"]).trials) == 6

    rerun = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "experiments" / "rerun_best.py"),
            str(study_dir),
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "best"),
            "hydra/launcher=basic",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    (rerun_metrics,) = [json.loads(p.read_text()) for p in (tmp_path / "best").rglob("metrics.json")]
    trial = read_metrics(study_dir / best["trial"])
    assert rerun_metrics["lambda_value"] == pytest.approx(trial["lambda_value"])
    assert rerun_metrics["valid"] == trial["valid"] and rerun_metrics["test"] == trial["test"]  # reproduced


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_stored_study_opens_again_with_optuna(tmp_path: Path, kind: str) -> None:
    """Both file storages the sweeper opens keep a study across processes' views of it."""
    import optuna

    from lopt.sweep.study import open_storage, storage_url

    url = storage_url(kind, tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 1e-3, 1.0, log=True)
    study.tell(trial, 0.5)
    assert (tmp_path / ("study.db" if kind == "sqlite" else "study.journal")).is_file()
    again = optuna.load_study(study_name="s", storage=open_storage(url))
    assert [t.value for t in again.trials] == [0.5] and again.best_params == trial.params


def test_a_running_trial_is_stale_when_its_driver_is_gone_or_silent() -> None:
    """A driver names itself by host and process id, which recur (a reboot, a clone of one
    machine image): a trial is left by a dead driver when it names this driver (asked between
    batches, none of its own runs), a process id that is not alive on this host, or, wherever it
    names, a heartbeat older than STALE_S; a live id on this host with a fresh heartbeat runs."""
    import socket
    from datetime import datetime
    from types import SimpleNamespace

    from lopt.sweep import study as sweeper_module

    sweeper = sweeper_module.StudySweeper(None, {"n_trials": 1}, "auc")
    host = socket.gethostname()
    gone = 2**22 + 1  # above Linux's largest pid_max: no process has it
    now = time.time()
    old = now - 2 * sweeper_module.STALE_S

    def trial(driver: str, beat: float) -> SimpleNamespace:
        attrs = {sweeper_module.DRIVER_ATTR: driver, sweeper_module.HEARTBEAT_ATTR: beat}
        return SimpleNamespace(system_attrs=attrs, datetime_start=datetime.fromtimestamp(beat))

    assert sweeper._stale(trial(sweeper.driver, now))
    assert not sweeper._stale(trial(f"{host}:{os.getppid()}", now))
    assert sweeper._stale(trial(f"{host}:{os.getppid()}", old))  # a reused id on this host
    assert sweeper._stale(trial(f"{host}:{gone}", now))
    assert not sweeper._stale(trial("elsewhere:1", now))
    assert sweeper._stale(trial("elsewhere:1", old))
    assert sweeper._stale(trial(f"suspended:{host}:{os.getppid()}", old))
