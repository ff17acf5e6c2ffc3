"""SGDA (Rendle 2012) is λOpt with plain SGD for Θ and Λ and the `dsep` granularity."""

from __future__ import annotations

import functools

import pytest
import torch

from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import bpr_loss, triple_scores
from lopt.modules.lambda_opt import LambdaOptModule
from lopt.optim.lambda_optimizers import LambdaSGD
from lopt.pipeline import build_module
from tests.helpers.hydra import compose_config
from tests.helpers.trainer import fit_batches

NU, NI, D, B = 10, 12, 4, 32
THETA_LR, LAMBDA_LR, LAMBDA_INIT = 4.0, 8.0, 2.0**-4  # dyadic Λ init: exact in float32 and float64


def _triples(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    users, pos = torch.randint(0, NU, (B,), generator=g), torch.randint(0, NI, (B,), generator=g)
    return users, pos, (pos + torch.randint(1, NI, (B,), generator=g)) % NI


def _batch(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"train": _triples(g), "valid": _triples(g)}


def _fit_one_step(module: LambdaOptModule, batch: dict) -> None:
    fit_batches(module, [batch], max_steps=1, precision="64-true")


def _sgda_from_config(seed: int):
    cfg = compose_config(
        [
            "model=sgda",
            "optimizer=sgd",
            f"model.dim={D}",
            "model.init_std=0.5",
            f"optimizer.lr={THETA_LR}",
            f"lambda_optimizer.lr={LAMBDA_LR}",
            f"granularity.init={LAMBDA_INIT}",
        ]
    )
    torch.manual_seed(seed)
    return build_module(cfg, NU, NI), cfg


@pytest.mark.parametrize("experiment", ["ml100k_sgda", "ml10m_sgda", "amazon_food_sgda"])
def test_sgda_experiments_are_lambda_opt_with_rendles_choices(experiment: str) -> None:
    cfg = compose_config([f"+experiment={experiment}"])
    assert cfg.model._target_ == "lopt.modules.lambda_opt.LambdaOptModule" and cfg.model.name == "sgda"
    assert cfg.granularity.name == "dsep"
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0
    assert cfg.optimizer.weight_decay == 0 and not cfg.optimizer.nesterov
    assert cfg.lambda_optimizer._target_ == "lopt.optim.lambda_optimizers.LambdaSGD"
    assert cfg.model.lambda_update_interval == 1 and cfg.model.penalty_scope == "batch"


def test_one_sgda_step_equals_a_lambda_opt_step() -> None:
    """The config-built SGDA module and a directly built λOpt module (SGD Θ, projected SGD Λ,
    dsep granularity, same settings) take bit-identical steps."""
    sgda, cfg = _sgda_from_config(seed=7)
    assert type(sgda) is LambdaOptModule and sgda.granularity.name == "dsep"
    torch.manual_seed(7)
    lopt = LambdaOptModule(
        NU,
        NI,
        D,
        0.5,
        optimizer=functools.partial(torch.optim.SGD, lr=THETA_LR),
        granularity=LambdaGranularity("dsep", NU, NI, D, LAMBDA_INIT),
        lambda_optimizer=functools.partial(LambdaSGD, lr=LAMBDA_LR),
        grad_clip_norm=cfg.model.grad_clip_norm,
        lambda_grad_clip_norm=cfg.model.lambda_grad_clip_norm,
        name="lambda_opt",
    )
    assert torch.equal(sgda.model.user_factors, lopt.model.user_factors)
    batch = _batch()
    _fit_one_step(sgda, batch)
    _fit_one_step(lopt, batch)
    for a, b in (
        (sgda.model.user_factors, lopt.model.user_factors),
        (sgda.model.item_factors, lopt.model.item_factors),
        (sgda.granularity.lambda_user, lopt.granularity.lambda_user),
        (sgda.granularity.lambda_item, lopt.granularity.lambda_item),
    ):
        assert torch.equal(a, b)
    assert not torch.equal(sgda.granularity.lambda_user, torch.full((1, D), LAMBDA_INIT, dtype=torch.float64))


def test_sgda_step_is_rendles_update() -> None:
    """Rendle's SGDA, written out on full matrices by autograd (float64):
    θ̄(λ) = θ − α(∇l(B) + ∇Ω(B; λ)),  λ' = max(λ − η ∇_λ l(V; θ̄(λ)), 0),  θ' = θ − α(∇l(B) + ∇Ω(B; λ'))
    with per-dimension λ_P ∈ R^d for users and λ_Q ∈ R^d for items."""
    sgda, _ = _sgda_from_config(seed=3)
    P0 = sgda.model.user_factors.detach().double().clone()
    Q0 = sgda.model.item_factors.detach().double().clone()
    batch = _batch(seed=1)
    _fit_one_step(sgda, batch)

    users, pos, neg = batch["train"]
    vu, vp, vn = batch["valid"]

    def omega(P, Q, lam_p, lam_q):
        return (
            (lam_p * P[users].square()).sum() + (lam_q * Q[pos].square()).sum() + (lam_q * Q[neg].square()).sum()
        ) / B

    def theta_step(lam_p, lam_q):
        P, Q = P0.clone().requires_grad_(), Q0.clone().requires_grad_()
        loss = bpr_loss(*triple_scores(P, Q, users, pos, neg)) + omega(P, Q, lam_p, lam_q)
        gP, gQ = torch.autograd.grad(loss, [P, Q], create_graph=True)
        return P0 - THETA_LR * gP, Q0 - THETA_LR * gQ

    lam_p = torch.full((1, D), LAMBDA_INIT, dtype=torch.float64, requires_grad=True)
    lam_q = torch.full((1, D), LAMBDA_INIT, dtype=torch.float64, requires_grad=True)
    P_bar, Q_bar = theta_step(lam_p, lam_q)
    d_p, d_q = torch.autograd.grad(bpr_loss(*triple_scores(P_bar, Q_bar, vu, vp, vn)), [lam_p, lam_q])
    new_p = (lam_p.detach() - LAMBDA_LR * d_p).clamp(min=0)
    new_q = (lam_q.detach() - LAMBDA_LR * d_q).clamp(min=0)
    P1, Q1 = theta_step(new_p, new_q)

    tol = dict(rtol=0, atol=1e-12)
    assert torch.allclose(sgda.granularity.lambda_user.detach(), new_p, **tol)
    assert torch.allclose(sgda.granularity.lambda_item.detach(), new_q, **tol)
    assert torch.allclose(sgda.model.user_factors.detach(), P1.detach(), **tol)
    assert torch.allclose(sgda.model.item_factors.detach(), Q1.detach(), **tol)
    assert (d_p.abs() > 1e-8).any() and (d_q.abs() > 1e-8).any()  # the check has teeth: Λ moved
