"""MF-BPR core: user and item factor matrices and their scores (docs/method.md, "Model")."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lopt.models.rows import TripleRows, reused_zeros, row_grad, triple_rows

#: With dense gradients (``sparse_grad=False``), a factor table of at most this many rows per
#: gather of the batch (users: B gathers, items: 2B) is gathered straight from the parameter:
#: autograd's dense backward (an ``index_add_`` into a fresh zero table) then costs less than the
#: row-sparse route's unique rows, sparse gradient and buffer bookkeeping, because the table is
#: small next to the batch (``experiments/bench.py --gather`` measures the crossover). Larger
#: tables take the row-sparse route, which never writes a table-sized gradient.
DENSE_GATHER_ROWS_PER_GATHER = 4


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
      size, and only the rows written last time are re-zeroed. The hook records the rows outside
      which the gradient is zero (:meth:`dense_grad_record`), so that the penalty and the clip
      norm need not read the whole table. A dense gradient (from any other use of the tables) is
      accumulated as usual. A table small next to the batch (:data:`DENSE_GATHER_ROWS_PER_GATHER`,
      ``dense_gather_rows_per_gather``) is gathered densely instead: the same gradient values
      (each row sums its gathers in the same order), without the row record.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, sparse_grad: bool = False) -> None:
        super().__init__()
        if n_users <= 0 or n_items <= 0 or dim <= 0:
            raise ValueError(f"MatrixFactorization needs positive sizes, got {n_users=}, {n_items=}, {dim=}")
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_factors = nn.Parameter(torch.randn(n_users, dim) * init_std)
        self.item_factors = nn.Parameter(torch.randn(n_items, dim) * init_std)
        self.sparse_grad = bool(sparse_grad)
        #: a table of at most this many rows per gather of the batch is gathered densely (dense
        #: gradients only; 0: never)
        self.dense_gather_rows_per_gather = DENSE_GATHER_ROWS_PER_GATHER
        # the hooks by parameter name (not by the parameter: the hooks hold no reference to it)
        self._dense_grads: dict[str, DenseGradFromRows] = {}
        if not self.sparse_grad:
            for name in ("user_factors", "item_factors"):
                hook = self._dense_grads[name] = DenseGradFromRows()
                getattr(self, name).register_post_accumulate_grad_hook(hook)

    def forward(
        self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor, rows: TripleRows | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of a triple batch: (B,), (B,) for ŷ(u, i) and ŷ(u, j). ``rows``: the batch's
        :func:`lopt.models.rows.triple_rows`, when already computed."""
        dense_users, dense_items = self.dense_gathers(users.numel())
        return sparse_triple_scores(
            self.user_factors, self.item_factors, users, pos_items, neg_items, rows, dense_users, dense_items
        )

    def dense_gathers(self, n_batch: int) -> tuple[bool, bool]:
        """(users, items): whether a batch of ``n_batch`` triples gathers that table densely."""
        if self.sparse_grad:
            return False, False
        limit = self.dense_gather_rows_per_gather * n_batch
        return self.n_users <= limit, self.n_items <= 2 * limit

    def dense_grad_record(self, param: torch.Tensor) -> DenseGradFromRows | None:
        """The hook that keeps ``param``'s dense gradient buffer (None: row-sparse gradients, or not
        a factor table of this model)."""
        for name, hook in self._dense_grads.items():
            if getattr(self, name) is param:
                return hook
        return None

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
    user_factors: Tensor,
    item_factors: Tensor,
    users: Tensor,
    pos_items: Tensor,
    neg_items: Tensor,
    rows: TripleRows | None = None,
    dense_users: bool = False,
    dense_items: bool = False,
) -> tuple[Tensor, Tensor]:
    """:func:`triple_scores` whose backward gives each table a row-sparse gradient: the batch's
    unique rows (ascending, one entry each; ``rows`` if given, else computed) are gathered once by
    ``F.embedding(sparse=True)``, then expanded to the triples (their gradients summed per row by
    the gather's backward). ``dense_users`` / ``dense_items``: that table is gathered straight
    from the parameter instead (a dense gradient, the same values)."""
    n = users.numel()
    if rows is None and not (dense_users and dense_items):
        rows = triple_rows((users, pos_items, neg_items), user_factors.shape[0], item_factors.shape[0])
    # index_select: its backward is an index_add_ (advanced indexing's accumulating index_put_ sorts)
    if dense_users:
        p = user_factors.index_select(0, users)
    else:
        p = F.embedding(rows.user_rows, user_factors, sparse=True).index_select(0, rows.user_idx)
    if dense_items:
        q_pos, q_neg = item_factors.index_select(0, pos_items), item_factors.index_select(0, neg_items)
    else:
        q = F.embedding(rows.item_rows, item_factors, sparse=True)
        q_pos, q_neg = q.index_select(0, rows.item_idx[:n]), q.index_select(0, rows.item_idx[n:])
    return (p * q_pos).sum(-1), (p * q_neg).sum(-1)


class DenseGradFromRows:
    """Post-accumulate-grad hook of one factor table: replaces a sparse ``table.grad`` by its dense
    values, written into a buffer this hook keeps across steps (reallocated only when the table's
    shape, dtype or device changes). It holds no reference to the table or the model, so a model
    that owns it can still be garbage-collected (a hook referencing its model would form a cycle
    through the parameter that Python's collector cannot see).

    The buffer is zero outside the rows written last (:attr:`rows`), so only those are re-zeroed
    before the next rows are copied in: the same values as zeroing the whole table. That record
    holds while the buffer's version counter is the one noted after the write; an in-place change
    by anyone else (a dense penalty, an accumulation into it, ``zero_grad(set_to_none=False)``)
    makes the rows unknown and the next call zeroes the whole buffer. A writer that changed only
    those rows says so with :meth:`wrote_within_rows`."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        #: the rows outside which ``buffer`` is zero (None: unknown)
        self.rows: torch.Tensor | None = None
        self._version = -1

    def __call__(self, table: torch.Tensor) -> None:
        grad = table.grad
        if grad is None:
            return
        if not grad.is_sparse:
            if grad is self.buffer:  # accumulated into in place: its rows are unknown now
                self.rows = None
            return
        buffer = self.buffer = reused_zeros(self.buffer, table.shape, grad.dtype, grad.device, self.rows, self._version)
        rows, values = row_grad(grad)
        if rows is None:
            buffer.copy_(values)
        else:
            buffer.index_copy_(0, rows, values)
        self.rows = rows
        self._version = buffer._version
        table.grad = buffer

    def known_rows(self, grad: torch.Tensor) -> torch.Tensor | None:
        """The rows outside which ``grad`` is zero, when ``grad`` is this hook's buffer and nothing
        but :meth:`wrote_within_rows` writers changed it since (None: unknown)."""
        if grad is self.buffer and grad._version == self._version:
            return self.rows
        return None

    def wrote_within_rows(self, grad: torch.Tensor) -> None:
        """Note that the in-place writes to ``grad`` since the record changed only its recorded
        rows (the record stays valid); nothing when ``grad`` is not this hook's buffer."""
        if grad is self.buffer and self.rows is not None:
            self._version = grad._version


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ softplus(−(ŷ_ui − ŷ_uj)) — the BPR loss of docs/method.md, a scalar."""
    return torch.nn.functional.softplus(neg_scores - pos_scores).mean()
