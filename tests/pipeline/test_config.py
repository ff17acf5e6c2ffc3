"""Config composition: every experiment composes, every config key is used, bad keys fail fast."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers.cli import REPO_ROOT
from tests.helpers.hydra import compose_config

CONF = REPO_ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides: list[str], hydra_config: bool = False):
    return compose_config(overrides, return_hydra_config=hydra_config)


def test_experiments_exist_for_every_paper_cell() -> None:
    for dataset in ("ml10m", "amazon_food", "ml100k", "lastfm2k"):
        for method in ("fix", "d", "du", "di", "dui"):
            assert f"{dataset}_{method}" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment: str) -> None:
    cfg = _compose([f"+experiment={experiment}"])
    dataset, method = experiment.rsplit("_", 1)
    assert cfg.dataset.name == dataset
    if method == "fix":
        assert cfg.model.name == "fix"
        assert "granularity" not in cfg and "lambda_optimizer" not in cfg
    elif method in {"d", "du", "di", "dui"}:
        assert cfg.model.name == "lambda_opt"
        assert cfg.granularity.name == method


#: method suffix → (model.label, needs_valid_triples, reported_granularity): the model configs' declarations
DECLARED = {
    "fix": ("MF-λFix", False, "fix"),
    "d": ("MF-λOpt-D", True, "d"),
    "du": ("MF-λOpt-DU", True, "du"),
    "di": ("MF-λOpt-DI", True, "di"),
    "dui": ("MF-λOpt-DUI", True, "dui"),
    "sgda": ("SGDA", True, "dsep"),
    "amf": ("AMF", False, None),
    "neumf": ("NeuMF", False, None),
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_models_declare_label_and_needs(experiment: str) -> None:
    cfg = _compose([f"+experiment={experiment}"])
    declared = (cfg.model.label, cfg.model.needs_valid_triples, cfg.model.reported_granularity)
    assert declared == DECLARED[experiment.rsplit("_", 1)[1]]
    assert cfg.model.needs_valid_triples == ("lambda_optimizer" in cfg)  # a Λ-step has a Λ optimizer


def test_granularity_is_built_from_its_target() -> None:
    from lopt.models.granularity import LambdaGranularity
    from lopt.pipeline import build_module

    cfg = _compose(["granularity=du", "granularity.init=0.5", "model.dim=3"])
    granularity = build_module(cfg, 5, 4).granularity
    assert isinstance(granularity, LambdaGranularity)
    assert (granularity.name, granularity.n_users, granularity.n_items, granularity.dim, granularity.init) == (
        "du",
        5,
        4,
        3,
        0.5,
    )
    assert cfg.model.label == "MF-λOpt-DU"  # the granularity's label suffix


def test_default_is_lambda_opt_dui_on_synthetic() -> None:
    cfg = _compose([])
    assert (cfg.model.name, cfg.granularity.name, cfg.dataset.name) == ("lambda_opt", "dui", "synthetic")


def test_paper_hyper_parameters_in_experiments() -> None:
    ml10m = _compose(["+experiment=ml10m_dui"])
    assert ml10m.data.batch_size == 10240 and ml10m.model.dim == 128 and ml10m.eval.every_n_epochs == 10
    assert ml10m.optimizer.lr == 1e-3 and ml10m.lambda_optimizer.lr == 1e-2 and ml10m.lambda_optimizer.amsgrad
    assert ml10m.model.grad_clip_norm == 100 and ml10m.model.lambda_grad_clip_norm == 100
    food = _compose(["+experiment=amazon_food_dui"])
    assert food.data.batch_size == 1024 and food.lambda_optimizer.amsgrad is True
    assert food.lambda_optimizer.lr == 1e-2 and food.model.lambda_grad_clip_norm == 1e-3
    assert food.dataset.preprocess.min_users_per_item == 20 and food.dataset.preprocess.min_items_per_user == 20
    # the paper-table λOpt experiments compile the look-ahead; the plain default and SGDA do not
    assert ml10m.model.compile_lookahead is True and food.model.compile_lookahead is True
    assert _compose(["+experiment=ml100k_d"]).model.compile_lookahead is True
    assert _compose([]).model.compile_lookahead is False
    assert _compose(["+experiment=ml100k_sgda"]).model.compile_lookahead is False
    grid = _compose(["+experiment=ml10m_fix"], hydra_config=True).hydra.sweeper.params["model.lambda_value"]
    assert sorted(float(v) for v in str(grid).split(",")) == [0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10]


def _keys(node: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            keys |= _keys(value, path + ".")
        keys.add(path)
    return keys


def test_every_config_key_is_read_by_code() -> None:
    """Every leaf key of every group option is either consumed by Hydra instantiation (a
    constructor argument of its ``_target_``) or read by name somewhere in ``lopt/`` or run.py."""
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "lopt").rglob("*.py")) + (REPO_ROOT / "run.py").read_text()
    interpolations = "\n".join(p.read_text() for p in CONF.rglob("*.yaml"))
    instantiated_groups = {"optimizer", "lambda_optimizer", "trainer", "logger", "model", "callbacks"}
    unused = []
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group.startswith("hydra") or group.split("/")[0] == "experiment":
            continue
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if not isinstance(node, dict):
            continue
        for key in _keys(node):
            leaf = key.rsplit(".", 1)[-1]
            if leaf in {"defaults", "_target_", "_partial_", "hydra"} or key.startswith(("hydra.", "source.")):
                continue
            if group.split("/")[0] in instantiated_groups:
                continue  # checked by instantiation (unknown kwargs raise)
            if "${" + key in interpolations:
                continue  # consumed by another config's interpolation
            if not re.search(rf"\b{re.escape(leaf)}\b", source):
                unused.append(f"{path.relative_to(REPO_ROOT)}: {key}")
    assert not unused, "config keys never read by the code:\n" + "\n".join(unused)


@pytest.mark.slow
def test_unknown_key_fails_before_training(tmp_path: Path) -> None:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "model.no_such_key=1", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_unknown_group_option_fails(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "granularity=nope", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "dui" in proc.stderr  # Hydra lists the available options
