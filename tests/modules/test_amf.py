"""AMF (APR on MF-BPR): per-row perturbation norm, the exact APR step, reduction to MF-BPR."""

from __future__ import annotations

import functools

import pytest
import torch

from lopt.models.mf import bpr_loss, triple_scores
from lopt.modules.amf import AMFModule, adversarial_rows
from lopt.modules.fix import FixModule
from tests.helpers.trainer import fit_batches

NU, NI, D, B = 11, 13, 5, 24


def _batches(n: int, seed: int = 0) -> list[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        users, pos = torch.randint(0, NU, (B,), generator=g), torch.randint(0, NI, (B,), generator=g)
        neg = (pos + torch.randint(1, NI, (B,), generator=g)) % NI  # j ≠ i, as the real sampler
        out.append({"train": (users, pos, neg)})
    return out


def _fit(module: AMFModule | FixModule, batches: list, epochs: int = 1) -> None:
    """Train ``module`` on ``batches`` (one epoch = all of them) in float64, no validation."""
    fit_batches(module, batches, max_epochs=epochs, precision="64-true", log_every_n_steps=1)


def _amf(seed: int = 3, **kw) -> AMFModule:
    args = dict(
        dim=D,
        init_std=0.3,
        optimizer=functools.partial(torch.optim.Adam, lr=0.05),
        lambda_value=0.01,
        adv_eps=0.5,
        adv_alpha=1.0,
        pretrain_epochs=0,
        grad_clip_norm=100.0,
    )
    args.update(kw)
    torch.manual_seed(seed)
    return AMFModule(NU, NI, **args)


def _fix(seed: int = 3, **kw) -> FixModule:
    args = dict(
        dim=D,
        init_std=0.3,
        optimizer=functools.partial(torch.optim.Adam, lr=0.05),
        lambda_value=0.01,
        grad_clip_norm=100.0,
    )
    args.update(kw)
    torch.manual_seed(seed)
    return FixModule(NU, NI, **args)


def test_adversarial_rows_have_norm_eps_per_row() -> None:
    grad = torch.randn(9, 6, dtype=torch.float64) * torch.logspace(-6, 3, 9, dtype=torch.float64).unsqueeze(1)
    grad[4] = 0.0
    rows = torch.tensor([0, 2, 4, 8, 2])
    delta = adversarial_rows(grad, rows, eps=0.7)
    norms = torch.linalg.vector_norm(delta, dim=1)
    assert torch.allclose(norms[[0, 1, 3, 4]], torch.full((4,), 0.7, dtype=torch.float64), rtol=0, atol=1e-14)
    assert torch.equal(delta[2], torch.zeros(6, dtype=torch.float64))  # zero gradient row → Δ = 0
    # direction: parallel to the gradient, pointing up the loss
    cos = torch.nn.functional.cosine_similarity(delta[[0, 1, 3]], grad[[0, 2, 8]], dim=1)
    assert torch.allclose(cos, torch.ones(3, dtype=torch.float64))
    assert not delta.requires_grad


def test_module_perturbations_use_bpr_gradient_rows() -> None:
    module = _amf().double()
    users, pos, neg = _batches(1)[0]["train"]
    loss = bpr_loss(*module.model(users, pos, neg))
    loss.backward()
    user_rows, item_rows = torch.unique(users), torch.unique(torch.cat([pos, neg]))
    dp, dq = module.perturbations(user_rows, item_rows)
    for delta in (dp, dq):
        assert torch.allclose(
            torch.linalg.vector_norm(delta, dim=1), torch.full((len(delta),), 0.5, dtype=torch.float64)
        )
    gp = module.model.user_factors.grad[user_rows]
    assert torch.allclose(dp, 0.5 * gp / gp.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("scope", ["batch", "all"])
def test_one_step_is_the_apr_objective(scope: str) -> None:
    """One SGD step equals −lr·∇[BPR(Θ) + α·BPR(Θ+Δ) + λΩ(Θ)] with Δ = ε·g/‖g‖ per row, held fixed."""
    # λ and scale dyadic: the fixed-λ buffer is created in float32 before the float64 cast
    lr, lam, eps, alpha, scale = 0.3, 2.0**-6, 0.4, 0.8, 0.5
    module = _amf(
        optimizer=functools.partial(torch.optim.SGD, lr=lr),
        lambda_value=lam,
        adv_eps=eps,
        adv_alpha=alpha,
        grad_clip_norm=None,
        penalty_scope=scope,
        penalty_scale=scale,
    )
    P0 = module.model.user_factors.detach().double().clone()
    Q0 = module.model.item_factors.detach().double().clone()
    batch = _batches(1)
    _fit(module, batch)

    users, pos, neg = batch[0]["train"]
    P, Q = P0.clone().requires_grad_(), Q0.clone().requires_grad_()
    gP, gQ = torch.autograd.grad(bpr_loss(*triple_scores(P, Q, users, pos, neg)), [P, Q])

    def normalize(g: torch.Tensor) -> torch.Tensor:
        n = g.norm(dim=1, keepdim=True)
        return torch.where(n > 0, eps * g / n.clamp_min(1e-300), torch.zeros_like(g))

    dP, dQ = normalize(gP), normalize(gQ)
    if scope == "batch":
        omega = (P[users].square().sum() + Q[pos].square().sum() + Q[neg].square().sum()) / B
    else:
        omega = scale * (P.square().sum() + Q.square().sum())
    total = (
        bpr_loss(*triple_scores(P, Q, users, pos, neg))
        + alpha * bpr_loss(*triple_scores(P + dP, Q + dQ, users, pos, neg))
        + lam * omega
    )
    tP, tQ = torch.autograd.grad(total, [P, Q])
    assert torch.allclose(module.model.user_factors.detach(), P0 - lr * tP, rtol=0, atol=1e-12)
    assert torch.allclose(module.model.item_factors.detach(), Q0 - lr * tQ, rtol=0, atol=1e-12)
    assert not torch.equal(module.model.user_factors.detach(), P0)


@pytest.mark.parametrize("off", [{"adv_eps": 0.0}, {"adv_alpha": 0.0}])
def test_eps_or_alpha_zero_is_exactly_mf_bpr(off: dict[str, float]) -> None:
    """Adam, three steps, batch penalty: parameters equal MF-λFix with the same λ bit for bit."""
    amf, fix = _amf(**off), _fix()
    assert torch.equal(amf.model.user_factors, fix.model.user_factors)
    batches = _batches(3, seed=1)
    _fit(amf, batches)
    _fit(fix, batches)
    assert torch.equal(amf.model.user_factors, fix.model.user_factors)
    assert torch.equal(amf.model.item_factors, fix.model.item_factors)


def test_adversary_changes_the_step() -> None:
    amf, fix = _amf(), _fix()
    batches = _batches(2, seed=2)
    _fit(amf, batches)
    _fit(fix, batches)
    assert not torch.allclose(amf.model.user_factors, fix.model.user_factors)


def test_pretraining_is_plain_mf_bpr_then_the_adversary_starts() -> None:
    batches = _batches(2, seed=4)
    amf, fix = _amf(pretrain_epochs=1), _fix()
    _fit(amf, batches, epochs=1)
    _fit(fix, batches, epochs=1)
    assert torch.equal(amf.model.user_factors, fix.model.user_factors)
    amf2, fix2 = _amf(pretrain_epochs=1), _fix()
    _fit(amf2, batches, epochs=2)
    _fit(fix2, batches, epochs=2)
    assert not torch.allclose(amf2.model.user_factors, fix2.model.user_factors)


@pytest.mark.parametrize(("key", "value"), [("adv_eps", -0.1), ("adv_alpha", -1.0), ("pretrain_epochs", -1)])
def test_bad_settings_name_the_config_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"model.{key}"):
        _amf(**{key: value})
