"""Row-sparse Θ optimizers through the real training code: λFix, every λOpt granularity and SGDA
run with them, a checkpoint carries their per-row state (an interrupted, resumed run matches an
uninterrupted one), and the models that cannot use them say so naming the config."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from lopt import pipeline
from lopt.models.granularity import GRANULARITY_NAMES
from tests.helpers.cli import TINY_OVERRIDES
from tests.helpers.hydra import compose_config
from tests.helpers.signals import SignalAtStep

RESUME_OVERRIDES = [
    *TINY_OVERRIDES,
    "optimizer=sparse_adam",
    "optimizer.lr=0.01",
    "trainer.max_epochs=3",
    "data.batch_size=128",
    "data.valid_batch_size=96",
    "seed=3",
]


def _cfg(run_dir: Path, data_dir: Path, overrides: list[str]):  # type: ignore[no-untyped-def]
    return compose_config(overrides, data_dir=data_dir, output_dir=run_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["model=fix", "model.lambda_value=0.01"],
        ["model=fix", "optimizer=sparse_adagrad"],
        *[[f"granularity={g}"] for g in GRANULARITY_NAMES if g != "fix"],
        ["model=sgda", "optimizer=sparse_sgd"],
    ],
    ids=["fix", "fix-adagrad", *[g for g in GRANULARITY_NAMES if g != "fix"], "sgda"],
)
def test_methods_train_with_row_sparse_optimizers(tmp_path: Path, overrides: list[str]) -> None:
    opt = [] if any(o.startswith("optimizer=") for o in overrides) else ["optimizer=sparse_adam"]
    cfg = _cfg(tmp_path / "run", tmp_path / "data", [*TINY_OVERRIDES, "trainer.max_epochs=1", *opt, *overrides])
    metrics = pipeline.run(cfg)
    assert all(math.isfinite(v) for v in metrics["test"].values()) and metrics["best_epoch"] == 0


@pytest.mark.slow
def test_sigterm_then_resume_matches_with_per_row_state(tmp_path: Path, monkeypatch) -> None:
    straight = pipeline.run(_cfg(tmp_path / "straight", tmp_path / "data", RESUME_OVERRIDES))
    run_dir = tmp_path / "run"
    original = pipeline.build_tracking_callbacks
    monkeypatch.setattr(
        pipeline, "build_tracking_callbacks", lambda *a: [*original(*a), SignalAtStep(7, signal.SIGTERM)]
    )
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit):
            pipeline.run(_cfg(run_dir, tmp_path / "data", RESUME_OVERRIDES))
    finally:
        signal.signal(signal.SIGTERM, previous)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    theta_state = ckpt["optimizer_states"][0]["state"]
    steps = theta_state[0]["step"]
    assert steps.dtype == torch.int64 and steps.shape == (120,) and 0 < int(steps.max()) <= 7
    monkeypatch.setattr(pipeline, "build_tracking_callbacks", original)
    resumed = pipeline.run(_cfg(run_dir, tmp_path / "data", [*RESUME_OVERRIDES, "resume=true"]))
    assert resumed["test"] == straight["test"]
    assert resumed["valid"] == straight["valid"]


@pytest.mark.parametrize(("model", "message"), [("amf", "model=amf"), ("neumf", "model=neumf")])
def test_amf_and_neumf_refuse_row_sparse_optimizers(tmp_path: Path, model: str, message: str) -> None:
    cfg = _cfg(tmp_path, tmp_path, [*TINY_OVERRIDES, f"model={model}", "optimizer=sparse_adam"])
    # Hydra wraps the module's ValueError; its message is kept
    with pytest.raises((ValueError, InstantiationException), match=f"{message}.*optimizer=sparse_adam"):
        pipeline.build_module(cfg, 120, 80)


def test_scope_all_refuses_row_sparse_optimizers(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tmp_path, [*TINY_OVERRIDES, "optimizer=sparse_adam", "model.penalty_scope=all"])
    with pytest.raises((ValueError, InstantiationException), match="model.penalty_scope=batch"):
        pipeline.build_module(cfg, 120, 80)


def test_row_sparse_optimizer_makes_row_sparse_gradients(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tmp_path, [*TINY_OVERRIDES, "optimizer=sparse_adam"])
    module = pipeline.build_module(cfg, 120, 80)
    assert module.model.sparse_grad
    dense = pipeline.build_module(_cfg(tmp_path, tmp_path, TINY_OVERRIDES), 120, 80)
    assert not dense.model.sparse_grad


def test_dense_optimizers_are_fused_by_default(tmp_path: Path) -> None:
    for name in ("adam", "adagrad", "sgd"):
        cfg = _cfg(tmp_path, tmp_path, [*TINY_OVERRIDES, f"optimizer={name}"])
        assert cfg.optimizer.fused is True
        module = pipeline.build_module(cfg, 120, 80)
        assert module.make_theta_optimizer(module.model.parameters()).defaults["fused"] is True
