"""Ω, its analytic Θ-gradient (rows and in place) against autograd, and the Θ grad-norm clip."""

from __future__ import annotations

import pytest
import torch

from lopt.models.granularity import GRANULARITY_NAMES, LambdaGranularity
from lopt.models.mf import MatrixFactorization
from lopt.models.regularizer import add_penalty_grad_, clip_grad_norm_, penalty, penalty_grad_rows
from tests.helpers.lambda_models import NI, NU, D, model_and_lambda

USERS = torch.tensor([0, 1, 1, 2, 3, 0, 1])
POS = torch.tensor([1, 2, 2, 3, 4, 5, 7])
NEG = torch.tensor([5, 6, 7, 5, 0, 2, 2])
BATCH = (USERS, POS, NEG)
# rows queried: repeated-in-batch, once-in-batch, absent-from-batch (user 6; items 8)
USER_ROWS = torch.tensor([1, 0, 6, 3, 5])
ITEM_ROWS = torch.tensor([2, 5, 8, 0, 7, 1])
SCALE = 0.37


def setup(name: str, dtype: torch.dtype = torch.float64) -> tuple[MatrixFactorization, LambdaGranularity]:
    return model_and_lambda(name, dtype, init=0.6, lam_offset=0.1)


@pytest.mark.parametrize("name", GRANULARITY_NAMES)
@pytest.mark.parametrize("scope", ["batch", "all"])
def test_penalty_value_matches_bruteforce(name: str, scope: str) -> None:
    model, gran = setup(name)
    P, Q = model.user_factors.detach(), model.item_factors.detach()
    lu, li = gran.dense_user_lambda(), gran.dense_item_lambda()
    if scope == "batch":
        expected = 0.0
        for u, i, j in zip(USERS.tolist(), POS.tolist(), NEG.tolist(), strict=True):
            expected += float((lu[u] * P[u] ** 2).sum() + (li[i] * Q[i] ** 2).sum() + (li[j] * Q[j] ** 2).sum())
        expected /= len(USERS)
    else:
        expected = SCALE * float((lu * P**2).sum() + (li * Q**2).sum())
    got = penalty(model, gran, BATCH, scope, SCALE)
    assert got.item() == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("name", GRANULARITY_NAMES)
@pytest.mark.parametrize("scope", ["batch", "all"])
def test_penalty_grad_rows_and_add_penalty_grad_equal_autograd(name: str, scope: str) -> None:
    model, gran = setup(name)
    P, Q = model.user_factors, model.item_factors
    gP, gQ = torch.autograd.grad(penalty(model, gran, BATCH, scope, SCALE), [P, Q])
    ru, ri = penalty_grad_rows(model, gran, BATCH, scope, SCALE, USER_ROWS, ITEM_ROWS)
    torch.testing.assert_close(ru, gP[USER_ROWS], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ri, gQ[ITEM_ROWS], rtol=1e-12, atol=1e-14)
    if scope == "batch":  # absent rows: exact zeros
        assert torch.all(ru[2] == 0) and torch.all(ri[2] == 0)
    else:
        assert torch.all(ru[2] != 0)

    base_p, base_q = torch.randn_like(P), torch.randn_like(Q)
    P.grad, Q.grad = base_p.clone(), base_q.clone()
    add_penalty_grad_(model, gran, BATCH, scope, SCALE)
    torch.testing.assert_close(P.grad, base_p + gP, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(Q.grad, base_q + gQ, rtol=1e-12, atol=1e-14)
    if scope == "batch":  # rows outside the batch are untouched bit for bit
        assert torch.equal(P.grad[6], base_p[6]) and torch.equal(Q.grad[8], base_q[8])


def test_add_penalty_grad_creates_missing_grad() -> None:
    model, gran = setup("dui")
    add_penalty_grad_(model, gran, BATCH, "batch", SCALE)
    gP, _ = torch.autograd.grad(penalty(model, gran, BATCH, "batch", SCALE), [model.user_factors, model.item_factors])
    torch.testing.assert_close(model.user_factors.grad, gP, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", [n for n in GRANULARITY_NAMES if n != "fix"])
@pytest.mark.parametrize("scope", ["batch", "all"])
def test_penalty_grad_rows_lambda_derivative_matches_double_backward(name: str, scope: str) -> None:
    """∂/∂Λ ⟨W, ∂Ω/∂Θ[rows]⟩ from the analytic rows equals autograd's mixed second derivative."""
    model, gran = setup(name)
    P, Q = model.user_factors, model.item_factors
    lam = list(gran.parameters())
    wu, wi = torch.randn(len(USER_ROWS), D), torch.randn(len(ITEM_ROWS), D)
    gP, gQ = torch.autograd.grad(penalty(model, gran, BATCH, scope, SCALE), [P, Q], create_graph=True)
    ref = torch.autograd.grad((gP[USER_ROWS] * wu).sum() + (gQ[ITEM_ROWS] * wi).sum(), lam)
    ru, ri = penalty_grad_rows(model, gran, BATCH, scope, SCALE, USER_ROWS, ITEM_ROWS)
    got = torch.autograd.grad((ru * wu).sum() + (ri * wi).sum(), lam)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=1e-12, atol=1e-14)


def test_penalty_grad_rows_gives_sparse_lambda_grad_only_on_batch_rows() -> None:
    model, gran = setup("dui")
    ru, ri = penalty_grad_rows(model, gran, BATCH, "batch", SCALE, USER_ROWS, ITEM_ROWS)
    (ru.sum() + ri.sum()).backward()
    rows = set(gran.lambda_user.grad.coalesce().indices()[0].tolist())
    assert rows == set(USER_ROWS.tolist()) & set(USERS.tolist())  # absent user 6 / 5 get no entry
    rows_i = set(gran.lambda_item.grad.coalesce().indices()[0].tolist())
    assert rows_i == set(ITEM_ROWS.tolist()) & set(torch.cat([POS, NEG]).tolist())


def test_unknown_scope() -> None:
    model, gran = setup("d")
    with pytest.raises(ValueError, match="model.penalty_scope"):
        penalty(model, gran, BATCH, "rows", 1.0)


@pytest.mark.parametrize("max_norm", [None, 1e-3, 0.5, 1e9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_clip_equals_torch(max_norm: float | None, dtype: torch.dtype) -> None:
    model, _ = setup("d", dtype)
    ref = MatrixFactorization(NU, NI, D, init_std=1.0).to(dtype)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    got = clip_grad_norm_(model, max_norm)
    if max_norm is None:
        expected = torch.nn.utils.get_total_norm([q.grad for q in ref.parameters()])
    else:
        expected = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    torch.testing.assert_close(got, expected, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)
    if max_norm == 1e-3:
        assert clip_grad_norm_(model, None).item() == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("max_norm", [None, 1e-3, 1e9])
def test_the_theta_step_on_a_recorded_buffer_reads_only_the_batch_rows(max_norm: float | None) -> None:
    """After the BPR backward, the penalty (scope "batch") and the clip keep the buffer's record of
    the batch's rows, the clip norm is taken over those rows, and every value equals the
    full-table computation (penalty by autograd, clip by torch). The record is what lets the next
    step re-zero those rows only."""
    from lopt.models.mf import bpr_loss, triple_scores
    from lopt.models.rows import batch_rows

    model, gran = setup("dui")
    ref = [p.detach().clone().requires_grad_(True) for p in (model.user_factors, model.item_factors)]
    bpr_loss(*model(*BATCH)).backward()
    (bpr_loss(*triple_scores(*ref, *BATCH)) + penalty(_Tables(*ref), gran, BATCH, "batch")).backward()
    add_penalty_grad_(model, gran, BATCH, "batch", rows=batch_rows(BATCH, NU, NI))
    records = [model.dense_grad_record(p) for p in (model.user_factors, model.item_factors)]
    for p, record in zip((model.user_factors, model.item_factors), records, strict=True):
        assert record.known_rows(p.grad) is not None  # the penalty stayed within the batch's rows
    got = clip_grad_norm_(model, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(ref, max_norm if max_norm is not None else float("inf"))
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
    for p, q, record in zip((model.user_factors, model.item_factors), ref, records, strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-14, atol=1e-300)
        assert record.known_rows(p.grad) is not None  # a finite clip scale keeps zero rows zero


def test_a_scope_all_penalty_makes_the_rows_unknown() -> None:
    model, gran = setup("dui")
    from lopt.models.mf import bpr_loss

    bpr_loss(*model(*BATCH)).backward()
    add_penalty_grad_(model, gran, BATCH, "all", SCALE)
    record = model.dense_grad_record(model.user_factors)
    assert record.known_rows(model.user_factors.grad) is None  # every row holds a penalty now


class _Tables(torch.nn.Module):
    def __init__(self, p: torch.Tensor, q: torch.Tensor) -> None:
        super().__init__()
        self.user_factors, self.item_factors = p, q  # type: ignore[assignment]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_norm", [None, 1e-3, 1e9])
@pytest.mark.parametrize("name", ["fix", "d", "dui"])
def test_the_one_pass_penalty_and_clip_equals_the_two_calls_bit_for_bit(
    name: str, max_norm: float | None, dtype: torch.dtype
) -> None:
    """add_penalty_grad_and_clip_rows_ gives add_penalty_grad_ then clip_grad_norm_'s gradients
    and norm bit for bit, keeps the record of the batch's rows, and does nothing (None) on a
    gradient without that record."""
    from lopt.models.regularizer import add_penalty_grad_and_clip_rows_
    from lopt.models.rows import batch_rows

    rows = batch_rows(BATCH, NU, NI)
    results = []
    for one_pass in (False, True):
        model, gran = setup(name, dtype)
        model.bpr_loss(*BATCH).backward()
        if one_pass:
            norm = add_penalty_grad_and_clip_rows_(model, gran, rows, len(USERS), max_norm)
        else:
            add_penalty_grad_(model, gran, BATCH, "batch", rows=rows)
            norm = clip_grad_norm_(model, max_norm)
        for p in (model.user_factors, model.item_factors):
            assert model.dense_grad_record(p).known_rows(p.grad) is not None
        results.append((norm, model.user_factors.grad.clone(), model.item_factors.grad.clone()))
    for two_calls, one_pass in zip(*results, strict=True):
        assert torch.equal(two_calls, one_pass)
    model, gran = setup(name, dtype)
    model.bpr_loss(*BATCH).backward()
    with torch.no_grad():
        model.item_factors.grad.add_(0.0)  # the record is lost
    before = model.user_factors.grad.clone()
    assert add_penalty_grad_and_clip_rows_(model, gran, rows, len(USERS), max_norm) is None
    assert torch.equal(model.user_factors.grad, before)
