"""The fused look-ahead over whole tables, for tables small next to the batches.

The row kernels of :mod:`.fused` simulate the Adam step on the rows the validation batch touches
only, and pay for finding them: the unique rows of both batches, each validation row's place among
the train rows, the Λ-rows the loss depends on, the gathers of Θ, g_t, λ and the Adam state, the
scatter onto those rows and a sparse COO Λ-gradient, which a dense Λ optimizer then densifies.
Where the two tables together have no more rows than a few times the train and validation triples
(:func:`max_rows_per_triple`; ml-100k: 2,625 rows for 2,048 triples), the rows touched are most of
the tables anyway, and one pass over every row is cheaper than that bookkeeping: this module replays
the Adam step on all rows (:func:`lopt.lookahead.fused.adam_lookahead`, the same arithmetic per
row), scores the validation batch on the looked-ahead tables (:func:`lopt.lookahead.fused._bpr_kernel`)
and scatters ∂l/∂θ̄ onto whole tables. It returns a dense Λ-gradient: zero on the rows the train
batch does not penalize (c_r = 0, hence K = 0), what the sparse one densifies to.

It serves the cases the row kernels serve (:func:`lopt.lookahead.dispatch.lookahead_validation_loss`)
except the lazy :class:`lopt.optim.row_sparse.RowSparseAdam` Θ optimizer (its per-row steps and
untouched rows), and only for a Λ optimizer that treats a dense gradient zero on a row as the
sparse gradient without it (:data:`lopt.lookahead.steps.DENSE_GRAD_LAMBDA_OPTIMIZERS`). The loss
is the row kernels' bit for bit (the same ops per row); the Λ-gradient sums the same terms in
another order where λ is shared by rows (float rounding only). The Θ clip's squared norm comes out
of the same pass (every row of the regularized gradient; rows outside the train batch add zeros).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from lopt.lookahead.fused import _bpr_kernel, adam_lookahead
from lopt.lookahead.state import PER_ROW_OPTIMIZERS, ParamState
from lopt.models.granularity import LambdaGranularity
from lopt.models.regularizer import FactorModel
from lopt.optim.compiled import Kernel
from lopt.types import Triples

#: The whole-table look-ahead runs when |U| + |I| ≤ this × (|B| + |V|) triples, with the kernels
#: compiled: ``bench.py --lookahead`` finds the two routes even between 2 and 4 table rows per
#: triple (uniform ids, d 128; experiments/bench/RESULTS.md, round 10).
COMPILED_MAX_ROWS_PER_TRIPLE = 2.0
#: The same with the eager kernels, whose passes over the tables cost more: even between 1 and 2.
EAGER_MAX_ROWS_PER_TRIPLE = 1.0


def max_rows_per_triple(compiled: bool) -> float:
    """Table rows per train and validation triple up to which the whole tables are cheaper."""
    return COMPILED_MAX_ROWS_PER_TRIPLE if compiled else EAGER_MAX_ROWS_PER_TRIPLE


def applies(optimizer: torch.optim.Optimizer, model: FactorModel, n_triples: int, compiled: bool) -> bool:
    """Whether the whole-table look-ahead serves a fused case (:func:`lopt.lookahead.state.capability`
    FUSED already checked): a dense Adam/AdamW, and tables of at most :func:`max_rows_per_triple`
    rows per train and validation triple."""
    rows = model.user_factors.shape[0] + model.item_factors.shape[0]
    return type(optimizer) not in PER_ROW_OPTIMIZERS and rows <= max_rows_per_triple(compiled) * n_triples


def _side_kernel(
    theta: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor | None,
    exp_avg_sq: torch.Tensor | None,
    max_exp_avg_sq: torch.Tensor | None,
    lam: torch.Tensor,
    counts: torch.Tensor,
    two_over_n: float,
    step_size: float,
    beta1: float,
    beta2: float,
    bc2_sqrt: float,
    eps: float,
    negate: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(θ̄, K, ‖g + c·λ⊙θ‖²) of one whole table (n, d): ``counts`` (n,) its rows' occurrences in
    the train batch, ``lam`` its λ storage ((n, k) or (1, k), broadcast)."""
    coef = counts.to(theta.dtype).unsqueeze(1) * two_over_n
    g = grad + coef * lam * theta
    sq = (g * g).sum()
    new, k = adam_lookahead(
        theta, coef, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, beta1, beta2, bc2_sqrt, eps, negate, False
    )
    return new, k, sq


def _dense_kernel(*args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(validation loss, the Θ clip's squared norm, ∂l/∂θ̄ ⊙ K of P, of Q) over whole tables; the
    arguments: each side's 14 of :func:`_side_kernel`, then the validation triples' users,
    positives and negatives."""
    new_p, k_u, sq_u = _side_kernel(*args[:14])
    new_q, k_i, sq_i = _side_kernel(*args[14:28])
    user_idx, pos_idx, neg_idx = args[28:31]
    loss, d_user, d_item = _bpr_kernel(new_p, new_q, k_u, k_i, user_idx, pos_idx, neg_idx, "scatter", "scatter")
    assert d_user is not None and d_item is not None
    d_p = torch.zeros_like(new_p).index_add_(0, user_idx, d_user)
    d_q = torch.zeros_like(new_q).index_add_(0, neg_idx, d_item).index_add_(0, pos_idx, d_item, alpha=-1)
    return loss, sq_u + sq_i, d_p.mul_(k_u), d_q.mul_(k_i)


DENSE = Kernel(_dense_kernel, "look-ahead", "model.compile_lookahead=false")


class DenseLookahead(NamedTuple):
    """The whole-table look-ahead's results: the validation loss and the Θ clip's squared norm
    (0-dim tensors: reading the norm is a host sync, left to a caller with a clip to check), and
    ∂l/∂λ of the user and item storages (None where a storage has no gradient; a storage shared by
    both sides gets both parts)."""

    loss: torch.Tensor
    clip_sq: torch.Tensor
    grad_user: torch.Tensor | None
    grad_item: torch.Tensor | None

    def storage_grads(self, granularity: LambdaGranularity) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(λ storage, its ∂l/∂λ) for each storage with a gradient, a storage shared by both sides
        once with the sum of its two parts: what :meth:`attach`'s backward writes into ``.grad``."""
        grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        for storage, grad in ((granularity.user_storage, self.grad_user), (granularity.item_storage, self.grad_item)):
            if grad is None:
                continue
            if grads and grads[0][0] is storage:
                grads[0] = (storage, grads[0][1] + grad)
            else:
                grads.append((storage, grad))
        return grads

    def attach(self, granularity: LambdaGranularity) -> torch.Tensor:
        """The loss as a scalar whose backward writes the Λ-gradient (times ∂out/∂l)."""
        return _Precomputed.apply(
            granularity.user_storage, granularity.item_storage, self.loss, self.grad_user, self.grad_item
        )


def _storage_grad(prod: torch.Tensor, storage: torch.Tensor, rowwise: bool) -> torch.Tensor | None:
    """∂l/∂(a λ storage) from ∂l/∂θ̄ ⊙ K of its table: as it is for a (n, d) storage, summed over
    the width for (n, 1), over the rows for a broadcast (1, k) one."""
    if not storage.requires_grad:
        return None
    if rowwise:
        return prod if storage.shape[1] == prod.shape[1] else prod.sum(1, keepdim=True)
    return prod.sum_to_size(storage.shape)


def lookahead(
    model: FactorModel,
    optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Triples,
    valid_batch: Triples,
    compiled: bool,
) -> DenseLookahead:
    """l(V; Θ̄_{t+1}(Λ)) and its Λ-gradient over whole tables (:func:`applies` holds; g_t dense in
    the factors' ``.grad``), the kernel compiled if ``compiled``."""
    users, pos, neg = train_batch
    n = users.numel()
    items = torch.cat([pos, neg])
    args: list[Any] = []
    for param, storage, batch in (
        (model.user_factors, granularity.user_storage, users),
        (model.item_factors, granularity.item_storage, items),
    ):
        read = ParamState(optimizer, param)
        state = (
            read.tensor("exp_avg"),
            read.tensor("exp_avg_sq"),
            read.tensor("max_exp_avg_sq") if read.flag("amsgrad") else None,
        )
        counts = torch.bincount(batch, minlength=param.shape[0])
        step_size, beta1, beta2, bc2_sqrt, eps = read.adam_constants(batch, param.detach())
        grad = param.grad
        assert grad is not None and not grad.is_sparse
        args += [param.detach(), grad.detach(), *state, storage.detach(), counts, 2.0 / n]
        args += [step_size, beta1, beta2, bc2_sqrt, eps, read.flag("maximize")]
    with torch.no_grad():
        loss, clip_sq, prod_p, prod_q = DENSE(compiled, *args, *valid_batch)
    grad_user = _storage_grad(prod_p, granularity.user_storage, granularity.user_rowwise)
    grad_item = _storage_grad(prod_q, granularity.item_storage, granularity.item_rowwise)
    return DenseLookahead(loss, clip_sq, grad_user, grad_item)


class _Precomputed(torch.autograd.Function):
    """A loss whose gradients in the two λ storages (which may be one tensor: autograd then adds
    both parts) were computed with it."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        lam_u: nn.Parameter,
        lam_i: nn.Parameter,
        loss: torch.Tensor,
        grad_u: torch.Tensor | None,
        grad_i: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.grads = (grad_u, grad_i)
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grad_u, grad_i = ctx.grads
        return (
            None if grad_u is None else grad_u * grad_out,
            None if grad_i is None else grad_i * grad_out,
            None,
            None,
            None,
        )


__all__ = [
    "COMPILED_MAX_ROWS_PER_TRIPLE",
    "EAGER_MAX_ROWS_PER_TRIPLE",
    "DenseLookahead",
    "applies",
    "lookahead",
    "max_rows_per_triple",
]
