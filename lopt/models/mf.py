"""MF-BPR core: user and item factor matrices and their scores (docs/method.md, "Model")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from lopt.models.rows import TripleRows, reused_zeros, row_grad, triple_rows


class MatrixFactorization(nn.Module):
    """Θ = (P, Q), P ∈ R^{n_users×dim}, Q ∈ R^{n_items×dim}; ŷ(u, i) = p_u · q_i. No biases.

    Both matrices are initialized i.i.d. N(0, init_std²) from torch's global RNG (seeded by the
    run). Training reads the BPR loss from :meth:`bpr_loss`; the forward gives the scores.

    * ``sparse_grad=True`` (for :mod:`lopt.optim.row_sparse`): the gradients are row-sparse, a
      sparse COO tensor over the batch's unique rows (ascending), and no dense (rows × dim)
      gradient is ever allocated. The forward gathers those rows once
      (:func:`sparse_triple_scores`).
    * ``sparse_grad=False`` (the paper's dense, row-separable optimizers): each table's ``.grad`` is
      dense, written into a buffer reused across steps (:class:`DenseGradFromRows`: only the rows
      written last time are re-zeroed, where that is cheaper than zeroing all). Reusing it avoids
      allocating (and page-faulting in) a fresh table-sized tensor every backward, which costs
      more than the rest of the backward at ML-10M size. The buffer records the rows outside which
      the gradient is zero (:meth:`dense_grad_record`), so that the penalty and the clip norm need
      not read the whole table. :meth:`bpr_loss`'s backward (:class:`DenseBPRLoss`) adds the
      triples' rows into it directly; the forward's row-sparse gradient is densified into it by a
      hook on each table. A dense gradient from any other use of the tables is accumulated as
      usual.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, sparse_grad: bool = False) -> None:
        super().__init__()
        if n_users <= 0 or n_items <= 0 or dim <= 0:
            raise ValueError(f"MatrixFactorization needs positive sizes, got {n_users=}, {n_items=}, {dim=}")
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_factors = nn.Parameter(torch.randn(n_users, dim) * init_std)
        self.item_factors = nn.Parameter(torch.randn(n_items, dim) * init_std)
        self.sparse_grad = bool(sparse_grad)
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
        return sparse_triple_scores(self.user_factors, self.item_factors, users, pos_items, neg_items, rows)

    def bpr_loss(
        self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor, rows: TripleRows | None = None
    ) -> torch.Tensor:
        """The BPR loss of a triple batch (0-dim): ``bpr_loss(*self(users, pos_items, neg_items))``,
        with a backward that writes the factor gradients straight into their tables' ``.grad``.

        With dense gradients it is :class:`DenseBPRLoss`: one pass computes the loss and the backward
        adds each triple's gradient rows into the reused gradient buffers, recording the batch's
        rows (``rows``: :func:`lopt.models.rows.triple_rows` of the batch, computed here when None).
        With row-sparse gradients (``sparse_grad=True``) it is the forward's autograd graph."""
        if self.sparse_grad:
            return bpr_loss(*self(users, pos_items, neg_items, rows))
        if rows is None:
            rows = triple_rows((users, pos_items, neg_items), self.n_users, self.n_items)
        return DenseBPRLoss.apply(
            self.user_factors,
            self.item_factors,
            users,
            pos_items,
            neg_items,
            rows.user_rows,
            rows.item_rows,
            self._dense_grads["user_factors"],
            self._dense_grads["item_factors"],
        )

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
) -> tuple[Tensor, Tensor]:
    """:func:`triple_scores` whose backward gives each table a row-sparse gradient: the batch's
    unique rows (ascending, one entry each; ``rows`` if given, else computed) are gathered once by
    ``F.embedding(sparse=True)``, then expanded to the triples (their gradients summed per row by
    the gather's backward)."""
    n = users.numel()
    if rows is None:
        rows = triple_rows((users, pos_items, neg_items), user_factors.shape[0], item_factors.shape[0])
    # index_select: its backward is an index_add_ (advanced indexing's accumulating index_put_ sorts)
    p = F.embedding(rows.user_rows, user_factors, sparse=True).index_select(0, rows.user_idx)
    q = F.embedding(rows.item_rows, item_factors, sparse=True)
    q_pos, q_neg = q.index_select(0, rows.item_idx[:n]), q.index_select(0, rows.item_idx[n:])
    return (p * q_pos).sum(-1), (p * q_neg).sum(-1)


class DenseGradFromRows:
    """The dense gradient buffer of one factor table, kept across steps (reallocated only when the
    table's shape, dtype or device changes), and the record of its rows. As a post-accumulate-grad
    hook it replaces a sparse ``table.grad`` by its dense values in the buffer; :class:`DenseBPRLoss`
    writes into it through :meth:`zeroed` and :meth:`publish`. It holds no reference to the table
    or the model, so a model that owns it can still be garbage-collected (a hook referencing its
    model would form a cycle through the parameter that Python's collector cannot see).

    The buffer is zero outside the rows written last (:attr:`rows`), so only those need re-zeroing
    before the next write (:func:`lopt.models.rows.reused_zeros` does so while they are few, else
    zeroes all): the same values as zeroing the whole table. That record
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
            # accumulated into in place: its rows are unknown now (an unchanged version means
            # autograd passed no gradient here, as after :class:`DenseBPRLoss`, which records its own)
            if grad is self.buffer and grad._version != self._version:
                self.rows = None
            return
        buffer = self.zeroed(table.shape, grad.dtype, grad.device)
        rows, values = row_grad(grad)
        if rows is None:
            buffer.copy_(values)
        else:
            buffer.index_copy_(0, rows, values)
        self.publish(table, rows)

    def zeroed(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The buffer, all zeros, for a gradient of ``shape``, ``dtype``, ``device`` (reused; only
        the recorded rows re-zeroed where that is cheaper: :func:`lopt.models.rows.reused_zeros`)."""
        self.buffer = reused_zeros(self.buffer, shape, dtype, device, self.rows, self._version)
        return self.buffer

    def publish(self, table: torch.Tensor, rows: torch.Tensor | None) -> None:
        """Make the buffer, just written on ``rows`` only (None: anywhere), ``table.grad``, and
        record those rows."""
        assert self.buffer is not None
        self.rows = rows
        self._version = self.buffer._version
        table.grad = self.buffer

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


class DenseBPRLoss(torch.autograd.Function):
    """The BPR loss of a triple batch, (1/B) Σ softplus(x) with x = p_u · (q_j − q_i), whose
    backward accumulates the factor gradients itself into the tables' ``.grad``.

    Forward: three row gathers (B, d), one difference and one row-wise dot. Backward, with
    c = sigmoid(x) · ∂/B: ``index_add_`` of c·(q_j − q_i) into the user gradient at ``users``, of
    −c·p_u at ``pos_items`` and c·p_u at ``neg_items`` into the item gradient, in the batch's
    order. A table whose ``.grad`` is None gets its :class:`DenseGradFromRows` buffer, zeroed,
    written, and recorded on ``user_rows`` / ``item_rows`` (the batch's unique rows, outside which
    the gradient is zero); an existing ``.grad`` is added to in place. The backward returns no
    gradient through autograd, so a table's ``.grad`` is never cloned from a returned tensor, and
    it is once-differentiable (``create_graph`` is not supported).

    The values equal autograd's through ``bpr_loss(*triple_scores(...))`` up to float rounding:
    x is one dot with the difference (not a difference of two dots), and a row that occurs as a
    positive and as a negative sums its terms in one pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        user_factors: torch.Tensor,
        item_factors: torch.Tensor,
        users: torch.Tensor,
        pos_items: torch.Tensor,
        neg_items: torch.Tensor,
        user_rows: torch.Tensor,
        item_rows: torch.Tensor,
        user_grads: DenseGradFromRows,
        item_grads: DenseGradFromRows,
    ) -> torch.Tensor:
        p = user_factors.index_select(0, users)
        diff = item_factors.index_select(0, neg_items).sub_(item_factors.index_select(0, pos_items))
        x = (p * diff).sum(-1)
        ctx.save_for_backward(p, diff, x, users, pos_items, neg_items, user_rows, item_rows)
        ctx.tables = (user_factors, item_factors)
        ctx.records = (user_grads, item_grads)
        return F.softplus(x).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[None, ...]:
        p, diff, x, users, pos_items, neg_items, user_rows, item_rows = ctx.saved_tensors
        coef = torch.sigmoid(x).mul_(grad_loss / x.numel()).unsqueeze(1)  # ∂loss/∂x, (B, 1)
        user_factors, item_factors = ctx.tables
        user_grads, item_grads = ctx.records
        if ctx.needs_input_grad[0]:
            grad_p = diff.mul_(coef)  # diff is not read again
            _add_to_grad(user_factors, user_grads, user_rows, lambda g: g.index_add_(0, users, grad_p))
        if ctx.needs_input_grad[1]:
            grad_q = p.mul_(coef)
            _add_to_grad(
                item_factors,
                item_grads,
                item_rows,
                lambda g: g.index_add_(0, pos_items, grad_q, alpha=-1).index_add_(0, neg_items, grad_q),
            )
        return (None,) * 9


def _add_to_grad(
    table: torch.Tensor, record: DenseGradFromRows, rows: torch.Tensor, add: Callable[[torch.Tensor], object]
) -> None:
    """Apply the in-place ``add`` to ``table.grad``: onto the record's zeroed buffer (then recorded
    on ``rows``) when there is no gradient yet, else onto the gradient there (densified if sparse)."""
    grad = table.grad
    if grad is None:
        add(record.zeroed(table.shape, table.dtype, table.device))
        record.publish(table, rows)
        return
    if grad.is_sparse:
        grad = table.grad = grad.to_dense()
    add(grad)


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ softplus(−(ŷ_ui − ŷ_uj)) — the BPR loss of docs/method.md, a scalar."""
    return torch.nn.functional.softplus(neg_scores - pos_scores).mean()
