"""MatrixFactorization's gradients: dense ones are written into a reused buffer with the values
of autograd's dense backward, sparse ones stay row-sparse, the fused training loss equals
autograd's, and the model stays collectable."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from lopt.models.mf import MatrixFactorization, bpr_loss, triple_scores

USERS, POS, NEG = torch.tensor([1, 2, 1, 7]), torch.tensor([4, 5, 4, 0]), torch.tensor([9, 4, 3, 5])


def test_the_forwards_dense_grad_equals_autograds_and_reuses_its_buffer() -> None:
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


def _dense_reference(model: MatrixFactorization, users, pos, neg) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    reference = [p.detach().clone().requires_grad_(True) for p in (model.user_factors, model.item_factors)]
    bpr_loss(*triple_scores(*reference, users, pos, neg)).backward()
    return [p.grad for p in reference]


def test_the_buffer_records_its_rows_and_rezeroes_only_them() -> None:
    """Only the rows written last step are re-zeroed (the buffer's other rows are never written),
    and the record of those rows is what the penalty and the clip norm read. (40 users: the 3
    rows stay under ROW_ZEROING_MAX_FRACTION of the table.)"""
    torch.manual_seed(0)
    model = MatrixFactorization(40, 12, 3, init_std=0.5).double()
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
    dense backward's again."""
    torch.manual_seed(0)
    model = MatrixFactorization(10, 12, 3, init_std=0.5).double()
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


# ----------------------------------------------------------------------------- DenseBPRLoss
def _autograd_reference(model: MatrixFactorization, users, pos, neg):  # type: ignore[no-untyped-def]
    """(loss, user grad, item grad) of bpr_loss(*triple_scores(...)) by autograd on copies."""
    reference = [p.detach().clone().requires_grad_(True) for p in (model.user_factors, model.item_factors)]
    loss = bpr_loss(*triple_scores(*reference, users, pos, neg))
    loss.backward()
    return loss.detach(), reference[0].grad, reference[1].grad


def _random_triples(n: int, n_users: int, n_items: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, size, (n,), generator=g) for size in (n_users, n_items, n_items))


@pytest.mark.parametrize("n", [1, 7, 200])
def test_the_fused_bpr_loss_equals_autograd_through_the_scores(n: int) -> None:
    """Loss and both gradients of MatrixFactorization.bpr_loss are autograd's through
    bpr_loss(*triple_scores(...)) up to float rounding (float64), repeated rows included."""
    torch.manual_seed(0)
    model = MatrixFactorization(30, 20, 4, init_std=0.5).double()
    batch = _random_triples(n, 30, 20, seed=n)
    loss = model.bpr_loss(*batch)
    loss.backward()
    want_loss, want_p, want_q = _autograd_reference(model, *batch)
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-14, atol=0)
    torch.testing.assert_close(model.user_factors.grad, want_p, rtol=1e-12, atol=1e-16)
    torch.testing.assert_close(model.item_factors.grad, want_q, rtol=1e-12, atol=1e-16)


def test_the_fused_bpr_loss_scales_with_the_upstream_gradient_and_accumulates() -> None:
    """(2·loss).backward() doubles the gradient; a second backward without zero_grad adds to the
    gradient already there (its row record then unknown), as autograd accumulates."""
    torch.manual_seed(0)
    model = MatrixFactorization(30, 20, 4, init_std=0.5).double()
    batch = _random_triples(50, 30, 20, seed=1)
    other = _random_triples(50, 30, 20, seed=2)
    (2.0 * model.bpr_loss(*batch)).backward()
    model.bpr_loss(*other).backward()
    _, p1, q1 = _autograd_reference(model, *batch)
    _, p2, q2 = _autograd_reference(model, *other)
    torch.testing.assert_close(model.user_factors.grad, 2 * p1 + p2, rtol=1e-12, atol=1e-16)
    torch.testing.assert_close(model.item_factors.grad, 2 * q1 + q2, rtol=1e-12, atol=1e-16)
    assert model.dense_grad_record(model.user_factors).known_rows(model.user_factors.grad) is None


def test_the_fused_bpr_loss_reuses_the_buffer_and_records_the_batch_rows() -> None:
    """Step after step, .grad is the same buffer, zero outside the batch's rows, which it records;
    a step touching many rows (a full zeroing next time) and one touching few (rows re-zeroed
    one by one) both leave exactly the autograd gradient."""
    torch.manual_seed(0)
    model = MatrixFactorization(200, 150, 4, init_std=0.5).double()
    record = model.dense_grad_record(model.user_factors)
    buffer = None
    for step, n in enumerate([400, 3, 5, 400, 2]):
        batch = _random_triples(n, 200, 150, seed=step)
        model.zero_grad(set_to_none=True)
        model.bpr_loss(*batch).backward()
        grad = model.user_factors.grad
        assert buffer is None or grad is buffer
        buffer = grad
        assert torch.equal(record.known_rows(grad), torch.unique(batch[0]))
        _, want_p, want_q = _autograd_reference(model, *batch)
        torch.testing.assert_close(grad, want_p, rtol=1e-12, atol=1e-16)
        torch.testing.assert_close(model.item_factors.grad, want_q, rtol=1e-12, atol=1e-16)


def test_the_fused_bpr_loss_leaves_a_frozen_table_alone_and_refuses_a_second_backward() -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(30, 20, 4, init_std=0.5).double()
    model.item_factors.requires_grad_(False)
    batch = _random_triples(20, 30, 20, seed=0)
    loss = model.bpr_loss(*batch)
    loss.backward(retain_graph=True)
    assert model.item_factors.grad is None and model.user_factors.grad is not None
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # its saved rows were consumed in place by the first backward


def test_the_bpr_loss_of_a_row_sparse_model_keeps_sparse_gradients() -> None:
    model = MatrixFactorization(10, 12, 3, init_std=0.5, sparse_grad=True)
    model.bpr_loss(USERS, POS, NEG).backward()
    assert model.user_factors.grad.is_sparse and model.item_factors.grad.is_sparse


def test_a_model_trained_by_the_fused_loss_is_garbage_collected() -> None:
    model = MatrixFactorization(10, 12, 3, init_std=0.5)
    model.bpr_loss(USERS, POS, NEG).backward()
    alive = weakref.ref(model), weakref.ref(model.user_factors)
    del model
    gc.collect()
    assert alive[0]() is None and alive[1]() is None


def test_reused_zeros_fills_the_whole_buffer_past_the_row_fraction() -> None:
    """Rows up to ROW_ZEROING_MAX_FRACTION of the buffer are re-zeroed one by one (a row outside
    them is left as it is); past it, the whole buffer is filled."""
    from lopt.models.rows import ROW_ZEROING_MAX_FRACTION, reused_zeros

    n = 40
    few = torch.arange(int(ROW_ZEROING_MAX_FRACTION * n))
    many = torch.arange(int(ROW_ZEROING_MAX_FRACTION * n) + 1)
    for rows, outside_kept in ((few, True), (many, False)):
        buffer = torch.ones(n, 3)
        out = reused_zeros(buffer, buffer.shape, buffer.dtype, buffer.device, rows, buffer._version)
        assert out is buffer and float(out[rows].abs().sum()) == 0.0
        assert (float(out[n - 1, 0]) == 1.0) is outside_kept
