"""Λ ≥ 0 is guaranteed by the λOpt module (projection after every Λ-step), whatever the Λ optimizer."""

from __future__ import annotations

import functools

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from lopt.models.granularity import LambdaGranularity
from lopt.modules.lambda_opt import LambdaOptModule
from lopt.pipeline import build_module
from tests.helpers.hydra import compose_config

NU, NI, D, B, STEPS = 10, 12, 4, 32, 12


def _batches() -> list[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)

    def triples() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        users, pos = torch.randint(0, NU, (B,), generator=g), torch.randint(0, NI, (B,), generator=g)
        return users, pos, (pos + torch.randint(1, NI, (B,), generator=g)) % NI

    return [{"train": triples(), "valid": triples()} for _ in range(STEPS)]


def _module(granularity: str) -> LambdaOptModule:
    """λOpt with a plain torch.optim.Adam on Λ (it knows nothing of Λ ≥ 0): its weight decay pulls
    Λ towards 0 and its normalized step of size lr = 0.5 overshoots a Λ of 0.01 below zero."""
    torch.manual_seed(0)
    return LambdaOptModule(
        NU,
        NI,
        D,
        0.5,
        optimizer=functools.partial(torch.optim.Adam, lr=0.05),
        granularity=LambdaGranularity(granularity, NU, NI, D, 0.01),
        lambda_optimizer=functools.partial(torch.optim.Adam, lr=0.5, weight_decay=10.0),
        lambda_grad_clip_norm=None,
    )


def _lambda_min(module: LambdaOptModule) -> float:
    return min(float(p.detach().min()) for p in module.granularity.parameters())


class _LambdaMinAfterEachStep(L.Callback):
    """Records the smallest Λ entry after every training iteration (Λ-step then Θ-step)."""

    def __init__(self) -> None:
        self.minima: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: LambdaOptModule, *args: object) -> None:
        self.minima.append(_lambda_min(module))


def _fit(module: LambdaOptModule) -> list[float]:
    """Train ``STEPS`` iterations; the smallest Λ entry after each."""
    record = _LambdaMinAfterEachStep()
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[record],
    )
    trainer.fit(module, train_dataloaders=DataLoader(_batches(), batch_size=None))
    assert len(record.minima) == STEPS
    return record.minima


@pytest.mark.parametrize("granularity", ["global", "d"])
def test_module_projects_lambda_after_each_step_with_plain_adam(
    granularity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert min(_fit(_module(granularity))) >= 0.0

    # The same run without the module's projection: plain Adam drives Λ below zero, so the
    # assertion above is the module's doing.
    monkeypatch.setattr(LambdaGranularity, "project_", lambda self: None)
    assert min(_fit(_module(granularity))) < 0.0


def test_config_with_torch_adam_for_lambda_builds_and_projects() -> None:
    """`lambda_optimizer._target_=torch.optim.Adam` composes into a module whose Λ stays ≥ 0."""
    cfg = compose_config(
        [
            "granularity=d",
            "lambda_optimizer._target_=torch.optim.Adam",
            "lambda_optimizer.lr=0.5",
            "+lambda_optimizer.weight_decay=10.0",
            f"model.dim={D}",
            "model.init_std=0.5",
            "granularity.init=0.01",
            "model.lambda_grad_clip_norm=null",
        ]
    )
    module = build_module(cfg, NU, NI)
    assert min(_fit(module)) >= 0.0
    assert type(module.lambda_optimizer()) is torch.optim.Adam


@pytest.mark.parametrize("name", ["adam", "sgd", "row_sparse_adam"])
def test_lopts_own_optimizers_project_themselves(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """lopt's Λ optimizers keep Λ ≥ 0 on their own, so the module's full pass over Λ is skipped for
    them — and only for them (a plain torch optimizer is projected at every Λ-step)."""
    calls = []
    original = LambdaGranularity.project_
    monkeypatch.setattr(LambdaGranularity, "project_", lambda self: (calls.append(1), original(self)))
    cfg = compose_config(
        [
            "granularity=dui",
            f"lambda_optimizer={name}",
            "lambda_optimizer.lr=0.5",
            f"model.dim={D}",
            "model.init_std=0.5",
            "granularity.init=0.01",
            "model.lambda_grad_clip_norm=null",
        ]
    )
    module = build_module(cfg, NU, NI)
    assert min(_fit(module)) >= 0.0 and calls == []
    assert min(_fit(_module("d"))) >= 0.0 and len(calls) == STEPS
