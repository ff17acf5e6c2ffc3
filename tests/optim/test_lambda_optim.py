"""Λ optimizers: projection, sparse = dense for SGD, dense Adam vs row-sparse Adam, state_dict."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lopt.models.rows import coalesced
from lopt.optim.lambda_optimizers import LambdaAdam, LambdaRowSparseAdam, LambdaSGD, clip_lambda_grad_
from tests.helpers.lambda_models import NU, D, lambda_opt_iteration, model_and_lambda

FACTORIES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda ps: LambdaSGD(ps, lr=0.5),
    "adam": lambda ps: LambdaAdam(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, amsgrad=False),
    "adam_amsgrad": lambda ps: LambdaAdam(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, amsgrad=True),
    "rowsparse_adam": lambda ps: LambdaRowSparseAdam(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, amsgrad=False),
    "rowsparse_adam_amsgrad": lambda ps: LambdaRowSparseAdam(ps, lr=0.1, betas=(0.9, 0.999), eps=1e-8, amsgrad=True),
}


def sparse_rows(rows: list[int], values: torch.Tensor, n: int) -> torch.Tensor:
    """An uncoalesced sparse row gradient (duplicates allowed), as F.embedding(sparse=True) makes."""
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, (n, values.shape[1]), check_invariants=True)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_lambda_stays_nonnegative(name: str, sparse: bool) -> None:
    lam = nn.Parameter(torch.full((NU, D), 0.01, dtype=torch.float64))
    opt = FACTORIES[name]([lam])
    for _ in range(4):
        grad = torch.rand(3, D, dtype=torch.float64) + 1.0  # pushes Λ down, past 0
        lam.grad = sparse_rows([0, 2, 2], grad, NU) if sparse else torch.ones(NU, D, dtype=torch.float64)
        opt.step()
        assert (lam >= 0).all()
    assert (lam[0] == 0).all()


def test_lambda_sgd_sparse_equals_dense() -> None:
    torch.manual_seed(0)
    init = torch.rand(NU, D, dtype=torch.float64)
    a, b = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    sa, sb = LambdaSGD([a], lr=0.3), LambdaSGD([b], lr=0.3)
    for _ in range(3):
        g = sparse_rows([1, 4, 1, 6], torch.randn(4, D, dtype=torch.float64), NU)
        a.grad, b.grad = g, g.to_dense()
        sa.step()
        sb.step()
        assert torch.equal(a, b)
    assert torch.equal(a[0], init[0])  # untouched row: bit for bit


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_lambda_adam_equals_torch_adam_then_clamp(amsgrad: bool, weight_decay: float, kernel: str) -> None:
    torch.manual_seed(0)
    shapes = [(NU, D), (1, D), (1, 1)]
    mine = [nn.Parameter(torch.rand(s, dtype=torch.float64) * 0.05) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in mine]
    opt = LambdaAdam(
        mine, lr=0.01, betas=(0.8, 0.99), eps=1e-8, amsgrad=amsgrad, weight_decay=weight_decay, **{kernel: True}
    )
    ropt = torch.optim.Adam(
        ref, lr=0.01, betas=(0.8, 0.99), eps=1e-8, amsgrad=amsgrad, weight_decay=weight_decay, foreach=False
    )
    for step in range(6):
        for p, q in zip(mine, ref, strict=True):
            g = torch.randn_like(p)
            if p.shape[0] == NU and step % 2:  # sparse grads are densified: same as the dense grad
                rows = torch.tensor([0, 3, 3])
                vals = torch.randn(3, D, dtype=torch.float64)
                p.grad = sparse_rows(rows.tolist(), vals, NU)
                q.grad = p.grad.to_dense()
            else:
                p.grad, q.grad = g, g.clone()
        opt.step()
        ropt.step()
        with torch.no_grad():
            for q in ref:
                q.clamp_(min=0.0)
        for p, q in zip(mine, ref, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
    assert any((p == 0).any() for p in mine), "the test should exercise the projection"


def test_row_sparse_adam_equals_adam_when_every_row_gets_gradient() -> None:
    """Per-row step counts = global step when every row is in every gradient."""
    torch.manual_seed(0)
    a = nn.Parameter(torch.rand(NU, D, dtype=torch.float64) + 1.0)
    b = nn.Parameter(a.detach().clone())
    oa = LambdaRowSparseAdam([a], lr=0.01, betas=(0.9, 0.99), eps=1e-8, amsgrad=True)
    ob = torch.optim.Adam([b], lr=0.01, betas=(0.9, 0.99), eps=1e-8, amsgrad=True)
    for _ in range(4):
        g = torch.randn(NU, D, dtype=torch.float64)
        a.grad = sparse_rows(list(range(NU)), g, NU)
        b.grad = g.clone()
        oa.step()
        ob.step()
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_row_sparse_adam_uses_per_row_step_count() -> None:
    a = nn.Parameter(torch.ones(2, 1, dtype=torch.float64))
    opt = LambdaRowSparseAdam([a], lr=0.1, betas=(0.9, 0.999), eps=0.0)
    a.grad = sparse_rows([0], torch.tensor([[1.0]], dtype=torch.float64), 2)
    opt.step()
    a.grad = sparse_rows([0, 1], torch.tensor([[1.0], [1.0]], dtype=torch.float64), 2)
    opt.step()
    # row 1's first step: bias-corrected m/sqrt(v) = 1 → moves by exactly lr; row 0: twice
    assert a[1].item() == pytest.approx(0.9, rel=1e-12)
    assert a[0].item() == pytest.approx(0.8, rel=1e-12)
    assert opt.state[a]["step"].tolist() == [2, 1]


@pytest.mark.parametrize("lam_opt_name", ["rowsparse_adam", "adam"])
def test_absent_user_keeps_lambda_only_with_row_sparse_adam(lam_opt_name: str) -> None:
    model, gran = model_and_lambda("dui", init=0.5, lam_offset=None)
    theta_opt = torch.optim.Adam(model.parameters(), lr=0.05)
    lam_opt = FACTORIES[lam_opt_name](list(gran.parameters()))
    # iteration 1: user 3 in both batches (gets λ-gradient and moments); user 6 never appears
    first = (
        (torch.tensor([3, 1, 0]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])),
        (torch.tensor([3, 1]), torch.tensor([1, 2]), torch.tensor([0, 7])),
    )
    later = (
        (torch.tensor([0, 1, 2, 1]), torch.tensor([1, 2, 3, 8]), torch.tensor([4, 5, 6, 0])),
        (torch.tensor([1, 2, 5]), torch.tensor([1, 2, 3]), torch.tensor([0, 7, 4])),
    )
    lambda_opt_iteration(model, gran, theta_opt, lam_opt, *first, clip=100.0, lambda_clip=100.0)
    lam3 = gran.lambda_user.detach()[3].clone()
    assert not torch.equal(lam3, torch.full((D,), 0.5, dtype=torch.float64)), "user 3 must have moved in iteration 1"
    state3 = {k: v[3].clone() for k, v in lam_opt.state[gran.lambda_user].items() if v.dim() > 0}
    for _ in range(3):
        lambda_opt_iteration(model, gran, theta_opt, lam_opt, *later, clip=100.0, lambda_clip=100.0)
    lam = gran.lambda_user.detach()
    assert torch.equal(lam[6], torch.full((D,), 0.5, dtype=torch.float64))  # never had a gradient
    if lam_opt_name == "rowsparse_adam":
        assert torch.equal(lam[3], lam3)  # bit for bit
        for k, v in state3.items():
            assert torch.equal(lam_opt.state[gran.lambda_user][k][3], v)
    else:  # dense Adam keeps moving user 3 with its first moment
        assert not torch.equal(lam[3], lam3)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip(name: str) -> None:
    torch.manual_seed(0)
    a = [nn.Parameter(torch.rand(NU, D, dtype=torch.float64)), nn.Parameter(torch.rand(1, D, dtype=torch.float64))]
    opt = FACTORIES[name](a)
    grads = [
        [sparse_rows([1, 2, 1], torch.randn(3, D, dtype=torch.float64), NU), torch.randn(1, D, dtype=torch.float64)]
        for _ in range(3)
    ]
    for g in grads[:2]:
        a[0].grad, a[1].grad = g
        opt.step()
    b = [nn.Parameter(p.detach().clone()) for p in a]
    opt2 = FACTORIES[name](b)
    buffer = io.BytesIO()  # through serialization, as a checkpoint (an in-memory state_dict shares tensors)
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt2.load_state_dict(torch.load(buffer))
    for params, o in ((a, opt), (b, opt2)):
        params[0].grad, params[1].grad = grads[2][0].clone(), grads[2][1].clone()
        o.step()
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)


def test_clip_lambda_grad_sparse_and_dense() -> None:
    torch.manual_seed(0)
    vals = torch.randn(4, D, dtype=torch.float64)
    a = [nn.Parameter(torch.zeros(NU, D, dtype=torch.float64)), nn.Parameter(torch.zeros(1, D, dtype=torch.float64))]
    b = [nn.Parameter(torch.zeros(NU, D, dtype=torch.float64)), nn.Parameter(torch.zeros(1, D, dtype=torch.float64))]
    a[0].grad = sparse_rows([2, 5, 2, 0], vals, NU)  # duplicates: the norm is of the coalesced values
    a[1].grad = torch.randn(1, D, dtype=torch.float64)
    b[0].grad, b[1].grad = a[0].grad.to_dense(), a[1].grad.clone()
    norm = clip_lambda_grad_(a, 0.1)
    ref = torch.nn.utils.clip_grad_norm_(b, 0.1)
    torch.testing.assert_close(norm, ref, rtol=1e-14, atol=0)
    assert norm > 0.1
    assert a[0].grad.is_sparse
    torch.testing.assert_close(a[0].grad.to_dense(), b[0].grad, rtol=1e-14, atol=0)
    torch.testing.assert_close(a[1].grad, b[1].grad, rtol=1e-14, atol=0)
    assert clip_lambda_grad_(a, None).item() == pytest.approx(0.1, rel=1e-4)


def test_coalesced_skips_the_sort_only_for_strictly_increasing_rows() -> None:
    values = torch.randn(3, D, dtype=torch.float64)
    sorted_rows = sparse_rows([1, 4, 6], values, NU)  # flag unset, as after autograd's accumulation
    assert not sorted_rows.is_coalesced()
    out = coalesced(sorted_rows)
    assert out.is_coalesced() and out.values().data_ptr() == values.data_ptr()  # no copy
    assert torch.equal(out.to_dense(), sorted_rows.to_dense())
    for rows in ([4, 1, 6], [1, 4, 4]):  # unsorted, duplicated: a real coalesce
        grad = sparse_rows(rows, values, NU)
        out = coalesced(grad)
        assert out.is_coalesced() and torch.equal(out.to_dense(), grad.to_dense())
        assert out.indices()[0].tolist() == sorted(set(rows))


def test_lambda_clip_that_does_not_bind_leaves_gradients_untouched() -> None:
    lam = nn.Parameter(torch.rand(NU, D, dtype=torch.float64))
    values = torch.randn(2, D, dtype=torch.float64)
    lam.grad = sparse_rows([2, 5], values, NU)
    norm = clip_lambda_grad_([lam], max_norm=1e9)
    assert norm == pytest.approx(float(values.norm()))
    assert lam.grad.is_coalesced() and torch.equal(lam.grad.values(), values)
    clip_lambda_grad_([lam], max_norm=0.5 * float(values.norm()))  # binds: halves the values
    torch.testing.assert_close(lam.grad.values(), values * 0.5, rtol=1e-6, atol=0.0)


def test_lambda_adam_densifies_consecutive_sparse_steps_on_different_rows() -> None:
    """The densify buffer re-zeroes only the rows it wrote last step: consecutive sparse gradients
    on different rows (and a buffer changed in place in between, which forces a full re-zero)
    still give torch's Adam on the dense gradients, then the clamp."""
    torch.manual_seed(0)
    mine = [nn.Parameter(torch.rand(NU, D, dtype=torch.float64) * 0.05)]
    ref = [nn.Parameter(mine[0].detach().clone())]
    opt = LambdaAdam(mine, lr=0.01, amsgrad=True)
    ropt = torch.optim.Adam(ref, lr=0.01, amsgrad=True, foreach=False)
    for step, rows in enumerate(([0, 3, 3], [1, 2], [4, 0], [2], [3, 1, 4])):
        vals = torch.randn(len(rows), D, dtype=torch.float64)
        mine[0].grad = sparse_rows(rows, vals, NU)
        ref[0].grad = mine[0].grad.to_dense()
        opt.step()
        ropt.step()
        with torch.no_grad():
            ref[0].clamp_(min=0.0)
        torch.testing.assert_close(mine[0], ref[0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(mine[0].grad, ref[0].grad, rtol=0, atol=0)
        if step == 2:
            mine[0].grad.add_(1.0)  # an in-place write elsewhere: the next densify zeroes everything
