"""The run's record: a resume keeps its config, a fresh run into a used directory is refused
unless overwrite, unfinished runs are listed apart, and a run recorded by an older version is
refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lopt.run.validate import ConfigError
from tests.helpers.cli import TINY_OVERRIDES, read_metrics, run_cli


@pytest.mark.slow
def test_resume_refuses_config_changes_and_records_a_longer_schedule(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_cli([*TINY_OVERRIDES, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    first = read_metrics(run_dir)
    config_before = (run_dir / ".hydra" / "config.yaml").read_text()

    refused = run_cli(["resume=true", "model.dim=16", "seed=4", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=False)
    assert refused.returncode != 0
    assert "model.dim: 8 (recorded) → 16" in refused.stderr and "seed: 0 (recorded) → 4" in refused.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config_before  # the record is intact

    run_cli(["resume=true", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    second = read_metrics(run_dir)
    assert second["test"] != first["test"]
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.trainer.max_epochs == 2 and config.model.dim == 8
    record = yaml.safe_load((run_dir / ".hydra" / "run_record.yaml").read_text())
    assert record["resumes"][0]["changed"] == {"trainer.max_epochs": [1, 2]}
    assert "trainer.max_epochs=2" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())


@pytest.mark.slow
def test_fresh_run_into_a_used_directory_is_refused_unless_overwrite(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stale = run_dir / "lambda_snapshots" / "epoch_999.npz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old run")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "run_record.yaml").write_text("config: {seed: 0}\noverrides: []\nresumes: []\n")
    args = [*TINY_OVERRIDES, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    refused = run_cli(args, cwd=tmp_path, check=False, timeout=120)
    assert refused.returncode != 0 and "already holds a run (lambda_snapshots/)" in refused.stderr
    assert "overwrite=true" in refused.stderr and stale.exists()
    run_cli([*args, "overwrite=true"], cwd=tmp_path)
    assert not stale.exists() and (run_dir / "metrics.json").is_file()


def test_reproduce_table_ignores_and_lists_unfinished_runs(tmp_path: Path, capsys) -> None:
    from lopt.analysis.results import find_runs, find_unfinished_runs
    from tests.helpers.scripts import load_script

    done, killed, empty = tmp_path / "done", tmp_path / "killed", tmp_path / "empty_test"
    for run_dir in (done, killed, empty):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    metrics = {"test": {"auc": 0.9}, "valid": {"auc": 0.9}, "dataset": "ml100k", "method": "MF-λFix", "seed": 0}
    (done / "metrics.json").write_text(json.dumps(metrics))
    (empty / "metrics.json").write_text(json.dumps({**metrics, "test": {}}))
    (killed / "checkpoints").mkdir()
    assert [r.path for r in find_runs(tmp_path)] == [done]
    assert find_unfinished_runs(tmp_path) == [empty, killed]
    assert load_script("reproduce_table").main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "ignored 2 unfinished run(s)" in err and str(killed) in err and str(empty) in err


def test_a_run_recorded_by_an_older_version_is_refused_by_name(tmp_path: Path) -> None:
    """recommend (and resume) on a run whose config predates the model declarations: a clear
    error naming the file, not a missing-key traceback from deep inside the build."""
    from omegaconf import OmegaConf

    from lopt.recommend import load_run_config
    from lopt.run.validate import check_recorded_config
    from tests.helpers.hydra import compose_config

    cfg = compose_config(["model=lambda_opt", "granularity=dui"])
    check_recorded_config(cfg, "current")  # a config of this version passes
    old = OmegaConf.to_container(cfg, resolve=False)
    for key in ("label", "needs_valid_triples", "reported_granularity"):
        old["model"].pop(key)
    run = tmp_path / "old_run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(old), run / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match=r"config\.yaml was recorded by an older lopt.*model\.needs_valid_triples"):
        load_run_config(run)


def test_a_run_recorded_with_an_older_layouts_class_paths_is_refused_by_name(tmp_path: Path) -> None:
    """A run whose recorded classes lived at module paths this version no longer has (e.g.
    lopt.models.mf_module.FixModule before the package layout by concept) is refused naming the
    key, before anything is instantiated."""
    from omegaconf import OmegaConf

    from lopt.recommend import load_run_config
    from tests.helpers.hydra import compose_config

    old = OmegaConf.to_container(compose_config(["model=fix"]), resolve=False)
    old["model"]["_target_"] = "lopt.models.mf_module.FixModule"
    run = tmp_path / "old_layout"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(old), run / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match=r"older lopt version whose classes have since moved.*model\._target_"):
        load_run_config(run)
