"""The hand-written Adam fast path of lookahead_validation_loss equals the autograd path: same loss,
same Λ-gradient (values to 1e-10 in float64, same sparse rows), for every granularity."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from lopt.lookahead import fused
from lopt.lookahead.dispatch import lookahead_validation_loss
from tests.helpers import lambda_models
from tests.helpers.lambda_models import TRAIN, VALID, model_and_lambda, train_backward
from tests.helpers.lookahead import (
    ADAMS,
    BIG_CLIP,
    LEARNABLE,
    assert_fast_equals_autograd,
    assert_same_lambda_grads,
    build_adam,
    lambda_grads,
)


@pytest.mark.parametrize("clip", [None, BIG_CLIP], ids=["noclip", "inactive_clip"])
@pytest.mark.parametrize("prior_steps", [0, 3], ids=["first", "later"])
@pytest.mark.parametrize("opt_name", list(ADAMS))
@pytest.mark.parametrize("gran_name", LEARNABLE)
def test_fast_path_equals_autograd_path(gran_name: str, opt_name: str, prior_steps: int, clip: float | None) -> None:
    model, gran, opt = build_adam(opt_name, gran_name, prior_steps)
    # Adam's first step moves by ≈ lr·sign(g): its Λ-dependence is through eps only (tiny, not 0)
    assert_fast_equals_autograd(model, gran, opt, clip, nonzero_above=1e-8 if prior_steps else 0.0)


@pytest.mark.parametrize("clip", [None, BIG_CLIP], ids=["noclip", "inactive_clip"])
@pytest.mark.parametrize("opt_name", ["adam", "adam_amsgrad"])
@pytest.mark.parametrize("gran_name", LEARNABLE)
def test_fast_path_equals_autograd_path_without_a_row_record(gran_name: str, opt_name: str, clip) -> None:  # type: ignore[no-untyped-def]
    """A dense g_t whose zero rows are unknown (its record invalidated by an in-place write, as
    any accumulation does): the look-ahead still equals its autograd replay, and its loss and
    Λ-gradient are bit for bit those read with the record."""
    unrecorded = lambda_models.build(ADAMS[opt_name], gran_name, prior_steps=3)
    train_backward(unrecorded[0], unrecorded[2])
    model = unrecorded[0]
    with torch.no_grad():
        for table in (model.user_factors, model.item_factors):
            table.grad.add_(0.0)  # same values, a new version: the rows are unknown now
            assert model.dense_grad_record(table).known_rows(table.grad) is None
    assert_fast_equals_autograd(*unrecorded, clip, nonzero_above=1e-8)
    recorded = lambda_models.build(ADAMS[opt_name], gran_name, prior_steps=3)
    train_backward(recorded[0], recorded[2])
    unrecorded_loss, unrecorded_grads = lambda_grads(*unrecorded, clip, fast=True)
    recorded_loss, recorded_grads = lambda_grads(*recorded, clip, fast=True)
    assert torch.equal(unrecorded_loss, recorded_loss)
    assert_same_lambda_grads(unrecorded_grads, recorded_grads)


def test_amsgrad_branch_where_max_is_held() -> None:
    """amsgrad with max_exp_avg_sq above v' on some entries (no Λ dependence through v there)."""
    model, gran, opt = build_adam("adam_amsgrad", "dui", 3)
    state = opt.state[model.user_factors]
    with torch.no_grad():
        state["max_exp_avg_sq"][:, :2] += 1.0  # held max on half the entries
    slow_loss, slow = lambda_grads(model, gran, opt, None, fast=False)
    fast_loss, fast = lambda_grads(model, gran, opt, None, fast=True)
    assert torch.equal(fast_loss, slow_loss)
    for (_, gs), (_, gf) in zip(slow, fast, strict=True):
        torch.testing.assert_close(gf.values(), gs.values(), rtol=1e-10, atol=1e-13)


def test_float32_fast_path_close_to_autograd() -> None:
    model, gran, opt = build_adam("adam", "dui", 3, dtype=torch.float32)
    _, slow = lambda_grads(model, gran, opt, None, fast=False)
    _, fast = lambda_grads(model, gran, opt, None, fast=True)
    for (_, gs), (_, gf) in zip(slow, fast, strict=True):
        torch.testing.assert_close(gf.values(), gs.values(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("opt_factory", "clip", "dropout"),
    [
        (lambda ps: torch.optim.Adam(ps, lr=0.05), 0.05, 0.0),  # active clip
        (lambda ps: torch.optim.Adam(ps, lr=0.05), None, 0.5),  # dropout
        (lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.01), None, 0.0),  # L2
        (lambda ps: torch.optim.SGD(ps, lr=0.1), None, 0.0),
    ],
    ids=["active_clip", "dropout", "adam_l2", "sgd"],
)
def test_other_cases_take_the_autograd_path(opt_factory, clip, dropout) -> None:  # type: ignore[no-untyped-def]
    model, gran = model_and_lambda("dui", lam_offset=None)
    opt = opt_factory(list(model.parameters()))
    train_backward(model, opt)
    with mock.patch.object(fused._LookaheadBPR, "apply", side_effect=AssertionError("fast path taken")):
        lookahead_validation_loss(
            model, opt, gran, TRAIN, VALID, scope="batch", scale=1.0, clip_norm=clip, dropout=dropout
        ).backward()


@pytest.mark.parametrize("opt_name", ["adam", "adam_amsgrad", "adam_maximize"])
@pytest.mark.parametrize("gran_name", LEARNABLE)
def test_the_clip_checks_regularized_gradient_is_shared_with_the_look_ahead(gran_name: str, opt_name: str) -> None:
    """With a clip to check and g_t known to be zero outside the train rows (the model's dense
    gradient record), the look-ahead reads its validation rows' regularized gradient from the
    clip check's train rows (computed once): the loss and the Λ-gradient are bit for bit those of
    computing it afresh."""
    model, gran, opt = build_adam(opt_name, gran_name, 3)
    taken = []
    real_replay = fused._Side.replay

    def replay(side, compiled):  # type: ignore[no-untyped-def]
        taken.append(side.grad_only_on_train_rows and side._regularized is not None)
        return real_replay(side, compiled)

    with mock.patch.object(fused._Side, "replay", replay):
        shared_loss, shared = lambda_grads(model, gran, opt, BIG_CLIP, fast=True)
    assert taken == [True, True]
    real_sides = fused.sides

    def unshared_sides(*args, **kwargs):  # type: ignore[no-untyped-def]
        sides = real_sides(*args, **kwargs)
        for side in sides:
            side.grad_only_on_train_rows = False
        return sides

    with mock.patch.object(fused, "sides", unshared_sides):
        loss, grads = lambda_grads(model, gran, opt, BIG_CLIP, fast=True)
    assert torch.equal(shared_loss, loss)
    assert_same_lambda_grads(shared, grads)
