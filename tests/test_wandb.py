"""Weights & Biases logging: mode resolution, offline fallback, and a real offline multirun read
back with W&B's own transaction-log reader (``wandb leet inspect --json``). No network is used."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lopt.tracking import loggers
from lopt.tracking.loggers import build_logger, resolve_wandb_mode, sweep_group, wandb_api_key_configured
from tests.e2e import REPO_ROOT, TINY_OVERRIDES, run_cli

NO_KEY = {"NETRC": "/nonexistent/netrc"}


def test_mode_resolution(tmp_path: Path) -> None:
    assert resolve_wandb_mode(None, {**NO_KEY}) == ("offline", "no W&B API key (WANDB_API_KEY or a netrc entry)")
    assert resolve_wandb_mode("online", {**NO_KEY})[0] == "offline"
    assert resolve_wandb_mode(None, {**NO_KEY, "WANDB_API_KEY": "x" * 40}) == ("online", None)
    assert resolve_wandb_mode(None, {**NO_KEY, "WANDB_MODE": "offline"}) == ("offline", "WANDB_MODE=offline")
    assert resolve_wandb_mode("disabled", {**NO_KEY, "WANDB_API_KEY": "k"}) == ("disabled", None)
    assert resolve_wandb_mode("offline", {"WANDB_API_KEY": "k"}) == ("offline", "logger.mode=offline")
    with pytest.raises(ValueError, match="logger.mode"):
        resolve_wandb_mode("sometimes", {})
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_api_key_configured({"NETRC": str(netrc)})
    assert not wandb_api_key_configured({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})
    assert sweep_group("multirun/2026-11-28/14-00-00/") == "multirun/2026-11-28/14-00-00"
    assert sweep_group(None) is None and len(sweep_group("x" * 300) or "") == 128


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["logger=wandb", f"paths.output_dir={tmp_path}", *overrides])


def test_no_key_falls_back_to_offline_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """No mode, no key: a real (offline) W&B run starts at once, and finishing it prints `wandb sync`."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(loggers, "_announced_offline", False)
    logger = build_logger(_cfg(tmp_path / "run"), tmp_path / "run")
    try:
        assert logger.experiment.settings.mode == "offline"
        logger.log_metrics({"valid/auc": 0.5}, step=1)
    finally:
        sync_dir = loggers.finish_wandb(logger)
    assert sync_dir is not None and sync_dir.is_dir() and sync_dir.parent == tmp_path / "run" / "wandb"
    assert f"wandb sync {sync_dir}" in capsys.readouterr().out
    assert list(sync_dir.glob("run-*.wandb"))


def test_disabled_and_other_loggers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    logger = build_logger(_cfg(tmp_path / "run", "logger.mode=disabled"), tmp_path / "run")
    logger.log_metrics({"valid/auc": 0.5}, step=1)
    loggers.finish_wandb(logger)
    assert not (tmp_path / "run" / "wandb").exists()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        none = compose("config", overrides=["logger=none"])
        csv = compose("config", overrides=["logger=csv", f"paths.output_dir={tmp_path}"])
    assert build_logger(none, tmp_path) is False
    assert type(build_logger(csv, tmp_path)).__name__ == "CSVLogger"


def _inspect(run_dir: Path) -> list[dict]:
    """Every record of the run's .wandb log, read by W&B's own reader (wandb-core)."""
    cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    proc = subprocess.run([cli, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_offline_multirun_through_cli(tmp_path: Path) -> None:
    """WANDB_MODE=offline, no key: each job gets its own finished offline run in its output
    directory, both offline jobs share the sweep's group, logger.mode=disabled writes nothing, and
    the records hold the metrics, Λ statistics and histograms, and the λ-trajectory table/plots."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *TINY_OVERRIDES, "logger=wandb", "logger.mode=null,disabled", "seed=0,1",
         "trainer.log_every_n_steps=2", "tracking.trajectories.every_n_steps=2", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env={"WANDB_MODE": "offline", "WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc"),
             "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache")},
        timeout=600,
    )
    jobs = {n: json.loads((sweep / str(n) / "metrics.json").read_text()) for n in range(4)}
    offline_jobs = [n for n in jobs if (sweep / str(n) / "wandb").exists()]
    assert len(offline_jobs) == 2, offline_jobs  # the two logger.mode=null jobs; disabled ones write nothing
    console = proc.stdout + proc.stderr
    assert console.count("W&B: WANDB_MODE=offline → logging offline") == 1  # said once per process
    groups, run_ids = set(), set()
    for n in offline_jobs:
        run_dirs = list((sweep / str(n) / "wandb").glob("offline-run-*"))
        assert len(run_dirs) == 1
        assert f"wandb sync {run_dirs[0]}" in proc.stdout
        records = _inspect(run_dirs[0])
        types = {r["type"] for r in records}
        assert {"run", "history", "exit"} <= types  # the run was finished
        run = next(r["run"] for r in records if r["type"] == "run")
        groups.add(run.get("run_group"))
        run_ids.add(run["run_id"])
        history: dict = {}
        for r in records:
            if r["type"] == "history":
                history.update(r["history"]["item"])
        for key in ("valid/auc", "test/auc", "test/ndcg@50", "train/bpr_loss", "train/penalty", "train/grad_norm",
                    "train/lr", "train/lookahead_valid_loss", "train/epoch_seconds", "lambda/user/mean",
                    "lambda/item/std", "lambda/user/q50", "lambda/item/max", "lambda/user/dim_mean/000",
                    "lambda/user/hist._type", "lambda_traj/table._type", "lambda_traj/user_table._type"):
            assert key in history, key
        assert history["test/auc"] == pytest.approx(jobs[n]["test"]["auc"])
        table = json.loads((run_dirs[0] / "files" / history["lambda_traj/table.path"]).read_text())
        assert {"step", "side", "entity_id", "raw_id", "stratum", "value"} <= set(table["columns"])
        assert len(table["data"]) == history["lambda_traj/table.nrows"] > 0
        strata = {(row[table["columns"].index("side")], row[table["columns"].index("stratum")]) for row in table["data"]}
        assert strata == {(s, t) for s in ("user", "item") for t in ("sparse", "median", "active")}
    assert groups == {str(sweep)} and len(run_ids) == 2
