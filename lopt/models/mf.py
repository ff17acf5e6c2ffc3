"""MF-BPR core: user and item factor matrices and their scores (docs/method.md, "Model")."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class MatrixFactorization(nn.Module):
    """Θ = (P, Q), P ∈ R^{n_users×dim}, Q ∈ R^{n_items×dim}; ŷ(u, i) = p_u · q_i. No biases.

    Both matrices are initialized i.i.d. N(0, init_std²) from torch's global RNG (seeded by the
    run). Gradients are dense (the paper's optimizers are dense and row-separable), or with
    ``sparse_grad`` row-sparse: a sparse COO tensor over the batch's unique rows (ascending), so
    no dense (rows × dim) gradient is allocated (for :mod:`lopt.models.sparse_optim`).
    """

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, sparse_grad: bool = False) -> None:
        super().__init__()
        if n_users <= 0 or n_items <= 0 or dim <= 0:
            raise ValueError(f"MatrixFactorization needs positive sizes, got {n_users=}, {n_items=}, {dim=}")
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_factors = nn.Parameter(torch.randn(n_users, dim) * init_std)
        self.item_factors = nn.Parameter(torch.randn(n_items, dim) * init_std)
        self.sparse_grad = bool(sparse_grad)

    def forward(
        self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of a triple batch: (B,), (B,) for ŷ(u, i) and ŷ(u, j)."""
        if self.sparse_grad:
            return sparse_triple_scores(self.user_factors, self.item_factors, users, pos_items, neg_items)
        return triple_scores(self.user_factors, self.item_factors, users, pos_items, neg_items)

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores of every item for a block of users."""
        return self.user_factors[users] @ self.item_factors.T


def triple_scores(
    user_factors: Tensor, item_factors: Tensor, users: Tensor, pos_items: Tensor, neg_items: Tensor
) -> tuple[Tensor, Tensor]:
    """ŷ(u, i), ŷ(u, j) for index tensors of equal length B, from any (rows × dim) factor tensors."""
    p = user_factors[users]
    return (p * item_factors[pos_items]).sum(-1), (p * item_factors[neg_items]).sum(-1)


def sparse_triple_scores(
    user_factors: Tensor, item_factors: Tensor, users: Tensor, pos_items: Tensor, neg_items: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`triple_scores` whose backward gives each table a row-sparse gradient: the batch's
    unique rows (ascending, one entry each) are gathered once by ``F.embedding(sparse=True)``,
    then expanded to the triples (their gradients summed per row by the gather's backward)."""
    from lopt.models.lookahead.rows import triple_rows

    n = users.numel()
    user_rows, item_rows, user_idx, item_idx = triple_rows(
        (users, pos_items, neg_items), user_factors.shape[0], item_factors.shape[0]
    )
    p = F.embedding(user_rows, user_factors, sparse=True).index_select(0, user_idx)
    q = F.embedding(item_rows, item_factors, sparse=True)
    # index_select: its backward is an index_add_ (advanced indexing's accumulating index_put_ sorts)
    return (p * q.index_select(0, item_idx[:n])).sum(-1), (p * q.index_select(0, item_idx[n:])).sum(-1)


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ softplus(−(ŷ_ui − ŷ_uj)) — the BPR loss of docs/method.md, a scalar."""
    return torch.nn.functional.softplus(neg_scores - pos_scores).mean()
