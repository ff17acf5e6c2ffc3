"""The fused look-ahead kernels for the row-sparse lazy Adam (RowSparseAdam) equal the autograd replay:
same loss, same Λ-gradient (values to 1e-10 in float64, same sparse rows), for every granularity,
with per-row step counts that differ, validation rows the train batch leaves untouched, and a Θ clip
that does not bind; the clip check reads the row-sparse gradient in place."""

from __future__ import annotations

import pytest
import torch

from lopt.lookahead import fused, steps
from lopt.lookahead.clip import CLIP_MARGIN, clip_is_inactive
from lopt.models.rows import triple_rows
from tests.helpers.lambda_models import NI, NU, TRAIN, VALID
from tests.helpers.lookahead import EXPERIMENT_CLIP, LEARNABLE, assert_fast_equals_autograd, build_sparse_adam


def test_setup_has_unequal_counts_and_untouched_validation_rows() -> None:
    """What the equality tests below rely on: validation rows with different step counts, and
    validation rows (users 4, 5; item 8) that the train batch's sparse gradient does not hold."""
    model, _, opt = build_sparse_adam("dui", 3)
    valid = triple_rows(VALID, NU, NI)
    counts = opt.state[model.user_factors]["step"].index_select(0, valid.user_rows)
    assert counts.unique().numel() > 1
    held = set(model.user_factors.grad.coalesce().indices()[0].tolist())
    assert {4, 5} <= set(valid.user_rows.tolist()) - held
    assert 8 not in set(model.item_factors.grad.coalesce().indices()[0].tolist())


@pytest.mark.parametrize("clip", [None, EXPERIMENT_CLIP], ids=["noclip", "inactive_clip"])
@pytest.mark.parametrize("sparse_grad", [True, False], ids=["sparse_grad", "dense_grad"])
@pytest.mark.parametrize("prior_steps", [0, 3], ids=["first", "later"])
@pytest.mark.parametrize("gran_name", LEARNABLE)
def test_fused_equals_replay(gran_name: str, prior_steps: int, sparse_grad: bool, clip: float | None) -> None:
    model, gran, opt = build_sparse_adam(gran_name, prior_steps, sparse_grad=sparse_grad)
    assert_fast_equals_autograd(model, gran, opt, clip, nonzero_above=1e-8 if prior_steps else 0.0)


def test_sparse_gradient_holding_other_rows_than_the_batch() -> None:
    """A row-sparse g_t that lacks a train row (2: its penalty alone does not move it, as in the
    replay) and holds a row outside the batch (5: it moves, without Λ-dependence)."""
    model, gran, opt = build_sparse_adam("dui", 3)
    P = model.user_factors
    held = torch.tensor([0, 1, 3, 5])
    values = torch.randn(4, P.shape[1], dtype=P.dtype, generator=torch.Generator().manual_seed(0))
    P.grad = torch.sparse_coo_tensor(held.unsqueeze(0), values, P.shape, check_invariants=True).coalesce()
    assert_fast_equals_autograd(model, gran, opt, EXPERIMENT_CLIP, nonzero_above=1e-8)


def test_rows_without_gradient_stay_put() -> None:
    """Lazy Adam: a validation row the sparse gradient lacks keeps θ̄ = θ bit for bit and K = 0;
    the others move and depend on λ."""
    model, gran, opt = build_sparse_adam("dui", 3)
    valid = triple_rows(VALID, NU, NI)
    side_u, _ = fused.sides(model, opt, gran, TRAIN, valid)
    with torch.no_grad():
        new, k = side_u.replay(False)
    theta = model.user_factors.detach().index_select(0, valid.user_rows)
    absent = torch.isin(valid.user_rows, torch.tensor([4, 5]))
    assert torch.equal((new == theta).all(1), absent)
    assert not k[absent].any()
    assert (k[~absent] != 0).any(1).all()


def test_every_row_moves_with_a_dense_gradient() -> None:
    """A dense gradient touches every row: a row absent from the train batch moves on its moments
    (with no λ-dependence)."""
    model, gran, opt = build_sparse_adam("dui", 3, sparse_grad=False)
    valid = triple_rows(VALID, NU, NI)
    side_u, _ = fused.sides(model, opt, gran, TRAIN, valid)
    with torch.no_grad():
        new, k = side_u.replay(False)
    theta = model.user_factors.detach().index_select(0, valid.user_rows)
    row4 = int(torch.nonzero(valid.user_rows == 4))
    assert opt.state[model.user_factors]["exp_avg"][4].abs().sum() > 0
    assert (new[row4] != theta[row4]).all()
    assert not k[row4].any()


@pytest.mark.parametrize("sparse_grad", [True, False], ids=["sparse_grad", "dense_grad"])
def test_clip_check_reads_the_row_sparse_gradient(sparse_grad: bool) -> None:
    """clip_is_inactive decides on the norm the real Θ-step clips: inactive above it by the
    margin, not at it."""
    model, gran, opt = build_sparse_adam("dui", 3, sparse_grad=sparse_grad)
    norm = float(steps.theta_step(model, opt, gran, TRAIN, scope="batch", scale=1.0, clip_norm=None))
    model, gran, _ = build_sparse_adam("dui", 3, sparse_grad=sparse_grad)  # g_t again, before the step
    assert clip_is_inactive(model, gran, TRAIN, (norm + 1e-6) * (1 + 2 * CLIP_MARGIN))
    assert not clip_is_inactive(model, gran, TRAIN, norm)
