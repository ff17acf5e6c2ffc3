"""MatrixFactorization's gradients: dense ones are written into a reused buffer with the values
of the dense gather's backward, sparse ones stay row-sparse, and the model stays collectable."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from lopt.models.mf import MatrixFactorization, bpr_loss, triple_scores

USERS, POS, NEG = torch.tensor([1, 2, 1, 7]), torch.tensor([4, 5, 4, 0]), torch.tensor([9, 4, 3, 5])


def test_dense_grad_equals_the_dense_gather_backward_and_reuses_its_buffer() -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(10, 12, 3, init_std=0.5).double()
    model.dense_gather_rows_per_gather = 0  # the row-sparse route and its buffer (tiny tables)
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


def _dense_reference(model: MatrixFactorization, users, pos, neg) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    reference = [p.detach().clone().requires_grad_(True) for p in (model.user_factors, model.item_factors)]
    bpr_loss(*triple_scores(*reference, users, pos, neg)).backward()
    return [p.grad for p in reference]


def test_the_buffer_records_its_rows_and_rezeroes_only_them() -> None:
    """Only the rows written last step are re-zeroed (the buffer's other rows are never written),
    and the record of those rows is what the penalty and the clip norm read."""
    torch.manual_seed(0)
    model = MatrixFactorization(10, 12, 3, init_std=0.5).double()
    model.dense_gather_rows_per_gather = 0  # the row-sparse route and its buffer (tiny tables)
    bpr_loss(*model(USERS, POS, NEG)).backward()
    buffer = model.user_factors.grad
    record = model.dense_grad_record(model.user_factors)
    assert record is not None and model.dense_grad_record(model.item_factors) is not record
    assert record.known_rows(buffer).tolist() == [1, 2, 7]
    # a row outside the record that someone else would have to zero: left alone by the next step
    # (it is only ever zero, so poking it proves the next step did not write it)
    with torch.no_grad():
        buffer[5] = 123.0
    record._version = buffer._version  # pretend the poke never happened
    model.zero_grad(set_to_none=True)
    bpr_loss(*model(USERS[:2], POS[:2], NEG[:2])).backward()
    assert model.user_factors.grad is buffer
    assert float(buffer[5, 0]) == 123.0  # not a full zero_()
    assert float(buffer[7].abs().sum()) == 0.0  # last step's row 7 re-zeroed
    torch.testing.assert_close(buffer[[1, 2]], _dense_reference(model, USERS[:2], POS[:2], NEG[:2])[0][[1, 2]])


def test_an_unrecorded_in_place_write_falls_back_to_zeroing_the_whole_buffer() -> None:
    """A dense in-place change (a scope-"all" penalty, zero_grad(set_to_none=False), an
    accumulation) invalidates the record: the next step zeroes every row and the values are the
    dense gather's backward again."""
    torch.manual_seed(0)
    model = MatrixFactorization(10, 12, 3, init_std=0.5).double()
    model.dense_gather_rows_per_gather = 0  # the row-sparse route and its buffer (tiny tables)
    bpr_loss(*model(USERS, POS, NEG)).backward()
    buffer = model.user_factors.grad
    record = model.dense_grad_record(model.user_factors)
    with torch.no_grad():
        buffer.add_(1.0)  # every row
    assert record.known_rows(buffer) is None
    model.zero_grad(set_to_none=True)
    bpr_loss(*model(USERS[:1], POS[:1], NEG[:1])).backward()
    expected = _dense_reference(model, USERS[:1], POS[:1], NEG[:1])
    torch.testing.assert_close(model.user_factors.grad, expected[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(model.item_factors.grad, expected[1], rtol=0, atol=1e-15)
    # an accumulation into the buffer (no zero_grad) makes its rows unknown too
    bpr_loss(*model(USERS[2:], POS[2:], NEG[2:])).backward()
    assert record.known_rows(model.user_factors.grad) is None


def test_batch_rows_are_triple_rows_with_unique_counts() -> None:
    from lopt.models.rows import batch_rows, triple_rows, unique_counts

    rows = batch_rows((USERS, POS, NEG), 10, 12)
    for got, want in zip(rows.triples, triple_rows((USERS, POS, NEG), 10, 12)):
        assert torch.equal(got, want)
    assert torch.equal(rows.user_counts, unique_counts(USERS, 10)[1])
    assert torch.equal(rows.item_counts, unique_counts(torch.cat([POS, NEG]), 12)[1])
    # the sort path (a table too large for a bincount) gives the same
    big = batch_rows((USERS, POS, NEG), 10**9, 10**9)
    for got, want in zip(big, rows):
        if isinstance(got, tuple):
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        else:
            assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_gather_gives_the_row_sparse_routes_gradient_bit_for_bit(dtype: torch.dtype) -> None:
    """Each table small next to the batch is gathered straight from the parameter: its gradient
    is the row-sparse route's, bit for bit (each row sums its gathers in the same order), for
    every mix of the two routes."""
    g = torch.Generator().manual_seed(3)
    users, pos, neg = (torch.randint(0, n, (64,), generator=g) for n in (20, 30, 30))
    grads = {}
    for dense_users, dense_items in [(False, False), (True, False), (False, True), (True, True)]:
        torch.manual_seed(0)
        model = MatrixFactorization(20, 30, 5, init_std=0.5).to(dtype)
        model.dense_gathers = lambda n, du=dense_users, di=dense_items: (du, di)  # type: ignore[method-assign]
        bpr_loss(*model(users, pos, neg)).backward()
        grads[dense_users, dense_items] = (model.user_factors.grad.clone(), model.item_factors.grad.clone())
    for route, (gu, gi) in grads.items():
        assert torch.equal(gu, grads[False, False][0]), route
        assert torch.equal(gi, grads[False, False][1]), route


def test_which_tables_are_gathered_densely() -> None:
    """A table of at most DENSE_GATHER_ROWS_PER_GATHER rows per gather (users: B, items: 2B) is
    gathered densely; never with row-sparse gradients, nor with the ratio set to 0."""
    from lopt.models.mf import DENSE_GATHER_ROWS_PER_GATHER as R

    model = MatrixFactorization(100 * R, 300 * R, 2, init_std=0.1)
    assert model.dense_gathers(100) == (True, False)  # items: 300R rows > 2 * 100 * R
    assert model.dense_gathers(150) == (True, True)
    assert model.dense_gathers(99) == (False, False)
    model.dense_gather_rows_per_gather = 0
    assert model.dense_gathers(10**6) == (False, False)
    sparse = MatrixFactorization(10, 10, 2, init_std=0.1, sparse_grad=True)
    assert sparse.dense_gathers(10**6) == (False, False)
    bpr_loss(*sparse(USERS, POS, NEG)).backward()
    assert sparse.user_factors.grad.is_sparse
