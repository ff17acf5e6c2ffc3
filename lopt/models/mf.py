"""MF-BPR core: user and item factor matrices and their scores (docs/method.md, "Model")."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lopt.models.rows import row_grad, triple_rows


class MatrixFactorization(nn.Module):
    """Θ = (P, Q), P ∈ R^{n_users×dim}, Q ∈ R^{n_items×dim}; ŷ(u, i) = p_u · q_i. No biases.

    Both matrices are initialized i.i.d. N(0, init_std²) from torch's global RNG (seeded by the
    run). The forward gathers the batch's unique rows once (:func:`sparse_triple_scores`), so the
    backward yields a row-sparse gradient: a sparse COO tensor over those rows (ascending).

    * ``sparse_grad=True`` keeps it so (for :mod:`lopt.optim.row_sparse`): no dense
      (rows × dim) gradient is ever allocated.
    * ``sparse_grad=False`` (the paper's dense, row-separable optimizers): a hook on each table
      turns the sparse gradient into a dense ``.grad`` as soon as it is accumulated, written into a
      buffer reused across steps (zeroed, then the rows copied in). The values are those of the
      dense gather's backward; reusing the buffer avoids allocating (and page-faulting in) a fresh
      table-sized tensor every backward, which costs more than the rest of the backward at ML-10M
      size. A dense gradient (from any other use of the tables) is accumulated as usual.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, sparse_grad: bool = False) -> None:
        super().__init__()
        if n_users <= 0 or n_items <= 0 or dim <= 0:
            raise ValueError(f"MatrixFactorization needs positive sizes, got {n_users=}, {n_items=}, {dim=}")
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_factors = nn.Parameter(torch.randn(n_users, dim) * init_std)
        self.item_factors = nn.Parameter(torch.randn(n_items, dim) * init_std)
        self.sparse_grad = bool(sparse_grad)
        if not self.sparse_grad:
            for table in (self.user_factors, self.item_factors):
                table.register_post_accumulate_grad_hook(DenseGradFromRows())

    def forward(
        self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of a triple batch: (B,), (B,) for ŷ(u, i) and ŷ(u, j)."""
        return sparse_triple_scores(self.user_factors, self.item_factors, users, pos_items, neg_items)

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores of every item for a block of users."""
        return self.user_factors[users] @ self.item_factors.T


def triple_scores(
    user_factors: Tensor, item_factors: Tensor, users: Tensor, pos_items: Tensor, neg_items: Tensor
) -> tuple[Tensor, Tensor]:
    """ŷ(u, i), ŷ(u, j) for index tensors of equal length B, from any (rows × dim) factor tensors.

    Gathers by ``index_select`` (same values as ``t[idx]``): its backward is an ``index_add_`` into
    a zero table, where advanced indexing's accumulating ``index_put_`` is several times slower."""
    p = user_factors.index_select(0, users)
    return (
        (p * item_factors.index_select(0, pos_items)).sum(-1),
        (p * item_factors.index_select(0, neg_items)).sum(-1),
    )


def sparse_triple_scores(
    user_factors: Tensor, item_factors: Tensor, users: Tensor, pos_items: Tensor, neg_items: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`triple_scores` whose backward gives each table a row-sparse gradient: the batch's
    unique rows (ascending, one entry each) are gathered once by ``F.embedding(sparse=True)``,
    then expanded to the triples (their gradients summed per row by the gather's backward)."""
    n = users.numel()
    user_rows, item_rows, user_idx, item_idx = triple_rows(
        (users, pos_items, neg_items), user_factors.shape[0], item_factors.shape[0]
    )
    p = F.embedding(user_rows, user_factors, sparse=True).index_select(0, user_idx)
    q = F.embedding(item_rows, item_factors, sparse=True)
    # index_select: its backward is an index_add_ (advanced indexing's accumulating index_put_ sorts)
    return (p * q.index_select(0, item_idx[:n])).sum(-1), (p * q.index_select(0, item_idx[n:])).sum(-1)


class DenseGradFromRows:
    """Post-accumulate-grad hook of one factor table: replaces a sparse ``table.grad`` by its dense
    values, written into a buffer this hook keeps across steps (reallocated only when the table's
    shape, dtype or device changes). It holds no reference to the table or the model, so a model
    that owns it can still be garbage-collected (a hook referencing its model would form a cycle
    through the parameter that Python's collector cannot see)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def __call__(self, table: torch.Tensor) -> None:
        grad = table.grad
        if grad is None or not grad.is_sparse:
            return
        buffer = self.buffer
        if buffer is None or buffer.shape != table.shape or buffer.dtype != grad.dtype or buffer.device != grad.device:
            buffer = self.buffer = torch.empty(table.shape, dtype=grad.dtype, device=grad.device)
        table.grad = dense_from_rows(grad, buffer)


def dense_from_rows(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad.to_dense()`` written into ``out`` (same shape; its contents are overwritten): zeroed,
    then the coalesced rows of the sparse ``grad`` (sparse_dim 1) copied in. Returns ``out``."""
    rows, values = row_grad(grad)
    out.zero_()
    return out.index_copy_(0, rows, values) if rows is not None else out.copy_(values)


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ softplus(−(ŷ_ui − ŷ_uj)) — the BPR loss of docs/method.md, a scalar."""
    return torch.nn.functional.softplus(neg_scores - pos_scores).mean()
