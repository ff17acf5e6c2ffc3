"""Weights & Biases logging: mode resolution, offline fallback, and a real offline multirun read
back with W&B's own transaction-log reader (``wandb leet inspect --json``). No network is used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lopt.tracking import loggers
from lopt.tracking.loggers import build_logger, resolve_wandb_mode, sweep_group
from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES, run_cli
from tests.helpers.hydra import compose_config

KEY = "a" * 40
NO_CREDENTIALS = (False, "no W&B credentials")


def test_mode_resolution() -> None:
    assert resolve_wandb_mode(None, {}, NO_CREDENTIALS) == ("offline", "no W&B credentials")
    assert resolve_wandb_mode("online", {}, NO_CREDENTIALS)[0] == "offline"
    assert resolve_wandb_mode(None, {}, (True, None)) == ("online", None)
    assert resolve_wandb_mode(None, {"WANDB_MODE": "offline"}, (True, None)) == ("offline", "WANDB_MODE=offline")
    assert resolve_wandb_mode("disabled", {}, (True, None)) == ("disabled", None)
    assert resolve_wandb_mode("offline", {}, (True, None)) == ("offline", "logger.mode=offline")
    with pytest.raises(ValueError, match="logger.mode"):
        resolve_wandb_mode("sometimes", {})
    assert sweep_group("multirun/2026-11-28/14-00-00/") == "multirun/2026-11-28/14-00-00"
    assert sweep_group(None) is None and len(sweep_group("x" * 300) or "") == 128


#: Runs in a fresh process whose HOME holds only what `wandb login` wrote: builds the W&B logger
#: with wandb.init replaced (no network) and prints the mode it was asked for.
_MODE_WITH_PATCHED_INIT = """
import json, sys
from types import SimpleNamespace
import wandb
from hydra import compose, initialize_config_dir
from lopt.tracking import loggers

calls = []
class FakeRun:
    settings = SimpleNamespace(mode="online", _offline=False)
    def define_metric(self, *args, **kwargs): calls.append(("define_metric", args, kwargs))
    def __getattr__(self, name): return lambda *a, **k: None
def fake_init(**kwargs):
    calls.append(("init", kwargs.get("mode")))
    return FakeRun()
wandb.init = fake_init
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("config", overrides=["logger=wandb", "paths.output_dir=" + sys.argv[2]])
print(json.dumps({"resolved": loggers.resolve_wandb_mode(None), "credentials": loggers.wandb_credentials_found(),
                  "logger": type(loggers.build_logger(cfg, __import__("pathlib").Path(sys.argv[2]))).__name__,
                  "calls": [c[:2] if c[0] == "init" else [c[0], c[1][0], c[2].get("summary")] for c in calls]}))
"""


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    return {**env, "HOME": str(home), "WANDB_SILENT": "true", "PYTHONPATH": str(REPO_ROOT)}


@pytest.mark.slow
def test_key_written_by_wandb_login_gives_an_online_run(tmp_path: Path) -> None:
    """`wandb login --no-verify KEY` into an empty HOME: wandb's lookup finds it, the run is online
    (wandb.init patched out), and the validation metrics are defined with summary=max. Without the
    login, the same process decides offline."""
    home = tmp_path / "home"
    home.mkdir()
    script = [sys.executable, "-c", _MODE_WITH_PATCHED_INIT, str(REPO_ROOT / "conf"), str(tmp_path / "run")]
    before = json.loads(
        subprocess.run(
            script, env=_clean_env(home), capture_output=True, text=True, timeout=300, check=True
        ).stdout.splitlines()[-1]
    )
    assert before["resolved"][0] == "offline" and "wandb login" in before["resolved"][1]
    cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    login = subprocess.run(
        [cli, "login", "--no-verify", KEY], env=_clean_env(home), capture_output=True, text=True, timeout=120
    )
    assert login.returncode == 0, login.stderr
    assert KEY in (home / ".netrc").read_text()
    after = json.loads(
        subprocess.run(
            script, env=_clean_env(home), capture_output=True, text=True, timeout=300, check=True
        ).stdout.splitlines()[-1]
    )
    assert after["resolved"] == ["online", None] and after["credentials"] == [True, None]
    assert after["logger"] == "ConfigOnlyWandbLogger" and ["init", "online"] in after["calls"]
    assert ["define_metric", "valid/auc", "max"] in after["calls"]
    assert ["define_metric", "valid/ndcg@100", "max"] in after["calls"]


def test_unreachable_server_falls_back_to_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An online init that fails (as W&B's does when the server does not answer within
    logger.init_timeout) is retried offline at once, with the timeout passed to wandb."""
    import wandb

    real_init, modes, timeouts = wandb.init, [], []

    def init(**kwargs):
        modes.append(kwargs["mode"])
        timeouts.append(kwargs["settings"].init_timeout)
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("Run initialization has timed out after 2.0 sec.")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(loggers, "wandb_credentials_found", lambda: (True, None))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = build_logger(_cfg(tmp_path / "run", "logger.init_timeout=2"), tmp_path / "run")
    try:
        assert modes == ["online", "offline"] and timeouts[0] == 2.0
        assert logger.experiment.settings.mode == "offline"
    finally:
        loggers.finish_wandb(logger)


def _cfg(tmp_path: Path, *overrides: str):
    return compose_config(["logger=wandb", f"paths.output_dir={tmp_path}", *overrides])


def test_no_key_falls_back_to_offline_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """No mode, no key: a real (offline) W&B run starts at once, and finishing it prints `wandb sync`."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(loggers, "wandb_credentials_found", lambda: (False, "no W&B credentials"))
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
    none = compose_config(["logger=none"])
    csv = compose_config(["logger=csv", f"paths.output_dir={tmp_path}"])
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
    directory, both offline jobs share the sweep's group and are named <method>/<dataset>/seed<k>
    [other swept values], the config holds the composed config once (no flat module hparams),
    logger.mode=disabled writes nothing, and the records hold the metrics (summary: the best
    validation values and epoch), a few Λ panels (mean, quantiles, histogram per side; the
    per-dimension means as one image) and the λ-trajectory plot and its one final table."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            *TINY_OVERRIDES,
            "logger=wandb",
            "logger.mode=null,disabled",
            "seed=0,1",
            "trainer.log_every_n_steps=2",
            "tracking.trajectories.every_n_steps=2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env={
            "WANDB_MODE": "offline",
            "WANDB_API_KEY": "",
            "NETRC": str(tmp_path / "no-netrc"),
            "WANDB_DIR": str(tmp_path / "wandb_dir"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        },
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
        summary: dict = {}
        for r in records:
            if r["type"] == "history":
                history.update(r["history"]["item"])
            if r["type"] == "summary":
                summary.update(r["summary"].get("update", {}))
        for key in (
            "valid/auc",
            "test/auc",
            "test/ndcg@50",
            "train/bpr_loss",
            "train/penalty",
            "train/grad_norm",
            "train/lr",
            "train/lookahead_valid_loss",
            "train/epoch_seconds",
            "lambda/user/mean",
            "lambda/item/q05",
            "lambda/user/q50",
            "lambda/item/q95",
            "lambda/user/hist._type",
            "lambda/item/hist._type",
            "lambda/per_dim._type",
            "lambda_traj/plot._type",
            "lambda_traj/lines_table._type",
            "test_beyond/coverage@50",
            "test_beyond/quintiles._type",  # the quintile breakdown: one table, not 50 scalar panels
        ):
            assert key in history, key
        # The dashboard: one panel per top-level key; no per-dimension series, no per-side tables.
        panels = {k.split(".")[0] for k in history if not k.startswith("_")}
        assert not any("dim_mean" in k or k.endswith(("/std", "/min", "/max")) for k in panels), sorted(panels)
        lambda_panels = {k for k in panels if k.startswith("lambda")}
        assert len(lambda_panels) == 2 * (1 + 5 + 1) + 1 + 2, sorted(lambda_panels)  # per side: mean, 5 quantiles, hist
        # 16 λ, 2 trajectory, 10 valid/test metrics, 7 training, 7 beyond-accuracy (6 scalars and
        # one quintile table), epoch and step: 43 at d = 16 as at d = 128.
        assert len(panels) <= 45, sorted(panels)
        # two tables, each logged once: the final trajectory table and the beyond-accuracy quintiles
        assert sum(r["type"] == "artifact" for r in records) == 2
        assert history["test/auc"] == pytest.approx(jobs[n]["test"]["auc"])
        assert summary["valid/auc"] == {"max": pytest.approx(jobs[n]["valid"]["auc"])}  # the best, not the last
        assert summary["best_epoch"] == jobs[n]["best_epoch"]
        definitions = {r["metric"].get("name"): r["metric"] for r in records if r["type"] == "metric"}
        assert definitions["valid/ndcg@100"]["summary"] == {"max": True}
        # <method>/<dataset>/seed<k>, then the other swept values
        assert run["display_name"] == f"MF-λOpt-DUI/synthetic/seed{jobs[n]['seed']} [logger.mode=null]"
        assert "protocol:lambdaopt" in run["tags"] and "dataset:synthetic" in run["tags"]
        config = dict(run.get("config", {}).get("update", {}))
        for r in records:
            if r["type"] == "config":
                config.update(r["config"].get("update", {}))
        assert "model" in config and "dim" not in config and "lambda_optimizer" in config, sorted(config)
        table = json.loads((run_dirs[0] / "files" / history["lambda_traj/lines_table.path"]).read_text())
        assert {"step", "side", "stratum", "raw_id", "frequency", "label", "value"} <= set(table["columns"])
        assert len(table["data"]) == history["lambda_traj/lines_table.nrows"] > 0
        column = {name: table["columns"].index(name) for name in table["columns"]}
        strata = {(row[column["side"]], row[column["stratum"]]) for row in table["data"]}
        assert strata == {(s, t) for s in ("user", "item") for t in ("sparse", "median", "active")}
        row = table["data"][0]
        assert (
            row[column["label"]]
            == f"{row[column['side']]} {row[column['stratum']]} {row[column['raw_id']]} (n={row[column['frequency']]})"
        )
    assert groups == {str(sweep)} and len(run_ids) == 2


@pytest.mark.slow
def test_run_name_tags_config_once_and_max_summaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An offline run (no network) is named <method>/<dataset>/seed<k> and tagged with method,
    dataset, granularity, protocol and control (plus logger.tags); Lightning's hyperparameter
    call adds no flat copy of model.* to the config; every ranking metric of the standard
    protocol gets a max summary — all read back from the run's own records."""
    monkeypatch.setattr(loggers, "_announced_offline", True)
    cfg = _cfg(tmp_path / "run", "logger.mode=offline", "protocol=standard", "seed=3", "logger.tags=[mine]")
    logger = build_logger(cfg, tmp_path / "run")
    try:
        run = logger.experiment
        assert run.name == "MF-λOpt-DUI/synthetic/seed3"
        tags = {"method:MF-λOpt-DUI", "dataset:synthetic", "granularity:dui", "protocol:standard", "control:none"}
        assert set(run.tags) == tags | {"mine"}
        logger.log_hyperparams({"dim": 8, "lr": 0.1})  # what Lightning does with the module's hparams
        assert "dim" not in run.config and "lr" not in run.config
        assert run.config["model"]["dim"] == cfg.model.dim
    finally:
        sync_dir = loggers.finish_wandb(logger)
    records = _inspect(sync_dir)
    definitions = {r["metric"].get("name"): r["metric"] for r in records if r["type"] == "metric"}
    for name in ("auc", "mrr", "recall@10", "precision@20", "ndcg@50", "hr@10", "map@50"):
        assert definitions[f"valid/{name}"]["summary"] == {"max": True}, name
    run_record = next(r["run"] for r in records if r["type"] == "run")
    assert run_record["display_name"] == "MF-λOpt-DUI/synthetic/seed3" and set(run_record["tags"]) == tags | {"mine"}


def test_run_name_in_a_multirun_adds_the_other_swept_values() -> None:
    cfg = compose_config(["model=fix", "dataset=ml100k", "seed=2"])
    assert loggers.run_name(cfg) == "MF-λFix/ml100k/seed2"
    assert loggers.run_name(cfg, "seed=2") == "MF-λFix/ml100k/seed2"
    assert loggers.run_name(cfg, "model.lambda_value=0.01,seed=2") == "MF-λFix/ml100k/seed2 [model.lambda_value=0.01]"
    assert "granularity:fix" in loggers.run_tags(cfg)
    assert not any(t.startswith("granularity:") for t in loggers.run_tags(compose_config(["model=neumf"])))
