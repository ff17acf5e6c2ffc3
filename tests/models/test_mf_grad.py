"""MatrixFactorization's gradients: dense ones are written into a reused buffer with the values
of the dense gather's backward, sparse ones stay row-sparse, and the model stays collectable."""

from __future__ import annotations

import gc
import weakref

import torch

from lopt.models.mf import MatrixFactorization, bpr_loss, triple_scores

USERS, POS, NEG = torch.tensor([1, 2, 1, 7]), torch.tensor([4, 5, 4, 0]), torch.tensor([9, 4, 3, 5])


def test_dense_grad_equals_the_dense_gather_backward_and_reuses_its_buffer() -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(10, 12, 3, init_std=0.5).double()
    reference = [p.detach().clone().requires_grad_(True) for p in (model.user_factors, model.item_factors)]
    bpr_loss(*triple_scores(*reference, USERS, POS, NEG)).backward()
    bpr_loss(*model(USERS, POS, NEG)).backward()
    first = model.user_factors.grad
    assert not first.is_sparse
    torch.testing.assert_close(first, reference[0].grad, rtol=0, atol=1e-15)
    torch.testing.assert_close(model.item_factors.grad, reference[1].grad, rtol=0, atol=1e-15)
    model.zero_grad(set_to_none=True)
    bpr_loss(*model(USERS[:1], POS[:1], NEG[:1])).backward()
    assert model.user_factors.grad is first  # the same buffer, rewritten
    assert int((first.abs().sum(1) > 0).sum()) == 1  # rows of the previous step were zeroed


def test_sparse_grad_stays_row_sparse() -> None:
    model = MatrixFactorization(10, 12, 3, init_std=0.5, sparse_grad=True)
    bpr_loss(*model(USERS, POS, NEG)).backward()
    assert model.user_factors.grad.is_sparse and model.item_factors.grad.is_sparse


def test_a_trained_dense_model_is_garbage_collected() -> None:
    """The gradient hooks must not tie the model to its parameters in a cycle gc cannot free
    (a long study or benchmark would keep every model's tables)."""
    model = MatrixFactorization(10, 12, 3, init_std=0.5)
    bpr_loss(*model(USERS, POS, NEG)).backward()
    alive = weakref.ref(model), weakref.ref(model.user_factors)
    del model
    gc.collect()
    assert alive[0]() is None and alive[1]() is None
