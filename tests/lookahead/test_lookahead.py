"""The invariant of docs/method.md: with Λ fixed, the row-wise look-ahead equals the real Θ-step, and its
Λ-gradient equals finite differences."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lopt.lookahead import steps
from lopt.lookahead.dispatch import lookahead_rows, lookahead_validation_loss, simulate_step_rows
from lopt.models.granularity import GRANULARITY_NAMES, LambdaGranularity
from lopt.models.mf import MatrixFactorization, bpr_loss
from tests.helpers import lambda_models
from tests.helpers.lambda_models import (
    NI,
    NU,
    TRAIN,
    VALID,
    D,
    assert_lambda_grad_matches_finite_differences,
    train_backward,
)

SCALE = 0.3
CLIP = 0.05  # well below the gradient norms here (asserted), so clipping is active

OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, maximize=False),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
    "adam_l2": lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.05, foreach=True),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.05, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
    "adagrad": lambda ps: torch.optim.Adagrad(
        ps, lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1
    ),
}


def build(
    opt_name: str,
    gran_name: str,
    dtype: torch.dtype,
    scope: str,
    clip: float | None,
    prior_steps: int,
    *,
    scheduler: bool = False,
) -> tuple[MatrixFactorization, LambdaGranularity, torch.optim.Optimizer]:
    """A tiny model, a Λ with distinct positive entries, and an optimizer whose state was built by
    ``prior_steps`` real Θ-steps (and whose lr a scheduler changed, if asked)."""
    return lambda_models.build(
        OPTIMIZERS[opt_name],
        gran_name,
        dtype=dtype,
        scope=scope,
        clip=clip,
        scale=SCALE,
        prior_steps=prior_steps,
        scheduler=scheduler,
    )


def check_invariant(opt_name, gran_name, dtype, scope, clip, prior_steps, *, scheduler=False, rtol, atol) -> None:  # type: ignore[no-untyped-def]
    model, gran, opt = build(opt_name, gran_name, dtype, scope, clip, prior_steps, scheduler=scheduler)
    if scheduler:
        assert opt.param_groups[0]["lr"] != opt.param_groups[0]["initial_lr"]
    P, Q = model.user_factors, model.item_factors
    train_backward(model, opt)
    g_before = (P.grad.clone(), Q.grad.clone())
    state_before = {k: v.clone() for k, v in opt.state[P].items() if isinstance(v, torch.Tensor)}

    user_rows = torch.unique(VALID[0])
    item_rows = torch.unique(torch.cat([VALID[1], VALID[2]]))
    with torch.no_grad():
        la_p, la_q = lookahead_rows(
            model, opt, gran, TRAIN, user_rows, item_rows, scope=scope, scale=SCALE, clip_norm=clip
        )
        la_loss = lookahead_validation_loss(model, opt, gran, TRAIN, VALID, scope=scope, scale=SCALE, clip_norm=clip)
    # the look-ahead reads g_t and the optimizer state, never writes them
    assert torch.equal(P.grad, g_before[0]) and torch.equal(Q.grad, g_before[1])
    for k, v in opt.state[P].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state_before[k])

    norm = steps.theta_step(model, opt, gran, TRAIN, scope=scope, scale=SCALE, clip_norm=clip)
    if clip is not None:
        assert norm > 2 * clip, "the test must exercise active clipping"
    torch.testing.assert_close(la_p, P.detach()[user_rows], rtol=rtol, atol=atol)
    torch.testing.assert_close(la_q, Q.detach()[item_rows], rtol=rtol, atol=atol)
    with torch.no_grad():
        real_loss = bpr_loss(*model(*VALID))
    torch.testing.assert_close(la_loss, real_loss, rtol=rtol, atol=atol)


# (optimizer, prior real steps): 0 = first step (no momentum buffer / empty Adam state), 3 = later step
STEP_CASES = [
    (name, prior)
    for name in OPTIMIZERS
    for prior in ((3,) if name in ("sgd", "adam_l2") else (0, 3))  # plain SGD: one code path
]


@pytest.mark.parametrize("clip", [None, CLIP], ids=["noclip", "clip"])
@pytest.mark.parametrize("scope", ["batch", "all"])
@pytest.mark.parametrize("gran_name", GRANULARITY_NAMES)
@pytest.mark.parametrize(
    ("opt_name", "prior_steps"), STEP_CASES, ids=[f"{n}-{'first' if p == 0 else 'later'}" for n, p in STEP_CASES]
)
def test_lookahead_equals_real_step_float64(
    opt_name: str, prior_steps: int, gran_name: str, scope: str, clip: float | None
) -> None:
    check_invariant(opt_name, gran_name, torch.float64, scope, clip, prior_steps, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("clip", [None, CLIP], ids=["noclip", "clip"])
@pytest.mark.parametrize("scope", ["batch", "all"])
@pytest.mark.parametrize("gran_name", ["d", "dui"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_lookahead_equals_real_step_float32(opt_name: str, gran_name: str, scope: str, clip: float | None) -> None:
    check_invariant(opt_name, gran_name, torch.float32, scope, clip, 3, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam", "adagrad"])
@pytest.mark.parametrize("scope", ["batch", "all"])
def test_lookahead_follows_scheduler_lr(opt_name: str, scope: str) -> None:
    check_invariant(opt_name, "dui", torch.float64, scope, CLIP, 3, scheduler=True, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- Λ-gradient vs FD
LEARNABLE = [n for n in GRANULARITY_NAMES if n != "fix"]


@pytest.mark.parametrize("clip", [None, CLIP], ids=["noclip", "clip"])
@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("scope", ["batch", "all"])
@pytest.mark.parametrize("gran_name", LEARNABLE)
def test_lambda_gradient_matches_finite_differences(
    gran_name: str, scope: str, opt_name: str, clip: float | None
) -> None:
    model, gran, opt = build(opt_name, gran_name, torch.float64, scope, clip, prior_steps=3)
    train_backward(model, opt)

    def loss() -> torch.Tensor:
        return lookahead_validation_loss(model, opt, gran, TRAIN, VALID, scope=scope, scale=SCALE, clip_norm=clip)

    assert_lambda_grad_matches_finite_differences(gran, loss)


def test_batch_scope_lambda_gradient_is_row_sparse() -> None:
    """Batch scope, no clip: ∇Λ of row-stored Λ is sparse on train ∩ valid rows only (O(|B|·d))."""
    model, gran, opt = build("adam", "dui", torch.float64, "batch", None, prior_steps=2)
    train_backward(model, opt)
    lookahead_validation_loss(model, opt, gran, TRAIN, VALID, scope="batch", scale=SCALE, clip_norm=None).backward()
    assert gran.lambda_user.grad.is_sparse and gran.lambda_item.grad.is_sparse
    users = set(gran.lambda_user.grad.coalesce().indices()[0].tolist())
    assert users == set(TRAIN[0].tolist()) & set(VALID[0].tolist())
    # with clip the norm involves every train row, still nothing outside the train batch
    gran.zero_grad(set_to_none=True)
    lookahead_validation_loss(model, opt, gran, TRAIN, VALID, scope="batch", scale=SCALE, clip_norm=CLIP).backward()
    users = set(gran.lambda_user.grad.coalesce().indices()[0].tolist())
    assert users == set(TRAIN[0].tolist())
    # a clip that cannot bind is a constant coefficient: the rows are the unclipped ones again
    gran.zero_grad(set_to_none=True)
    lookahead_validation_loss(model, opt, gran, TRAIN, VALID, scope="batch", scale=SCALE, clip_norm=1e9).backward()
    users = set(gran.lambda_user.grad.coalesce().indices()[0].tolist())
    assert users == set(TRAIN[0].tolist()) & set(VALID[0].tolist())


def test_dropout_is_applied_to_lookahead_embeddings() -> None:
    model, gran, opt = build("adam", "d", torch.float64, "batch", None, prior_steps=1)
    train_backward(model, opt)
    kwargs = dict(scope="batch", scale=SCALE, clip_norm=None)
    base = lookahead_validation_loss(model, opt, gran, TRAIN, VALID, **kwargs)
    torch.manual_seed(3)
    dropped = lookahead_validation_loss(model, opt, gran, TRAIN, VALID, dropout=0.5, **kwargs)
    assert dropped.item() != pytest.approx(base.item())
    dropped.backward()
    assert gran.lambda_shared.grad is not None


# --------------------------------------------------------------------------- errors
def test_unsupported_optimizer_is_named() -> None:
    model = MatrixFactorization(NU, NI, D, init_std=0.1)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    with pytest.raises(NotImplementedError, match=r"RMSprop.*optimizer.*SGD.*Adam.*AdamW.*Adagrad"):
        simulate_step_rows(opt, model.user_factors, torch.tensor([0]), torch.zeros(1, D))


def test_missing_grad_is_explained() -> None:
    model = MatrixFactorization(NU, NI, D, init_std=0.1)
    gran = LambdaGranularity("d", NU, NI, D, 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="backward"):
        lookahead_validation_loss(model, opt, gran, TRAIN, VALID, scope="batch", scale=1.0, clip_norm=None)


def test_parameter_not_in_optimizer() -> None:
    model = MatrixFactorization(NU, NI, D, init_std=0.1)
    opt = torch.optim.SGD([model.item_factors], lr=0.1)
    with pytest.raises(ValueError, match="not managed"):
        simulate_step_rows(opt, model.user_factors, torch.tensor([0]), torch.zeros(1, D))


FLAG_VARIANTS: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd_maximize": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5, maximize=True),
    "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5, foreach=True),
    "adam_maximize": lambda ps: torch.optim.Adam(ps, lr=0.05, maximize=True),
    "adam_fused": lambda ps: torch.optim.Adam(ps, lr=0.05, fused=True),
    "adamw_foreach_amsgrad": lambda ps: torch.optim.AdamW(ps, lr=0.05, amsgrad=True, foreach=True),
    "adagrad_maximize_foreach": lambda ps: torch.optim.Adagrad(ps, lr=0.1, maximize=True, foreach=True),
}


@pytest.mark.parametrize("variant", list(FLAG_VARIANTS))
@pytest.mark.parametrize("prior_steps", [0, 2], ids=["first_step", "later_step"])
def test_flags_that_do_not_change_the_math(variant: str, prior_steps: int) -> None:
    OPTIMIZERS[variant] = FLAG_VARIANTS[variant]
    try:
        check_invariant(variant, "dui", torch.float64, "batch", CLIP, prior_steps, rtol=1e-10, atol=1e-12)
    finally:
        del OPTIMIZERS[variant]
