"""Lazy Adam's row update, the one core of the row-sparse Adam optimizers: Θ's ``sparse_adam``
(:class:`lopt.optim.row_sparse.RowSparseAdam`) and Λ's ``row_sparse_adam``
(:class:`lopt.optim.lambda_optimizers.LambdaRowSparseAdam`, which adds amsgrad and the projection
Λ ≥ 0), and of the look-ahead that replays the Θ one (:mod:`lopt.lookahead`).

Only the touched rows R update their moments and values; a row's bias correction uses its own
step count s (after this step's increment):

    m[R] ← m[R].lerp(g, 1 − β1);  v[R] ← β2·v[R] + (1 − β2)·g²   (amsgrad: v̂[R] ← max(v̂[R], v[R]))
    θ[R] ← θ[R] − lr/(1 − β1^s) · m[R] / (√v[R] / √(1 − β2^s) + eps)
"""

from __future__ import annotations

import torch

from lopt.optim.compiled import Kernel


def lazy_adam_constants(
    lr: float, beta1: float, beta2: float, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (step size lr/(1 − β1^s), √(1 − β2^s)) of lazy Adam for the rows' step counts
    ``steps`` (after this step's increment, in the parameter's dtype): one definition for the
    optimizer and the look-ahead that replays it, so the two agree bit for bit."""
    return lr / (1 - torch.pow(beta1, steps)), (1 - torch.pow(beta2, steps)).sqrt()


def check_hyperparameters(lr: float, betas: tuple[float, float], eps: float, where: str) -> None:
    """ValueError naming ``where`` (the optimizer's config name and group) unless lr ≥ 0, eps ≥ 0
    and 0 ≤ β1, β2 < 1 (a NaN fails too)."""
    if not (lr >= 0 and eps >= 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        raise ValueError(f"invalid {where} hyper-parameters {lr=}, {betas=}, {eps=}")


def adam_rows_(
    p: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    rows: torch.Tensor,
    g: torch.Tensor,
    step_size: torch.Tensor,
    bc2_sqrt: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    max_exp_avg_sq: torch.Tensor | None = None,
    min_value: float | None = None,
) -> None:
    """Lazy Adam on ``rows`` (ascending, unique) in place as separate tensor operations (the
    reference), given each row's step size and √(1 − β2^s) as (rows, 1, …) tensors (from
    :func:`lazy_adam_constants`). ``max_exp_avg_sq``: amsgrad's running maximum of v (its rows are
    updated too); ``min_value``: each updated row of ``p`` is clamped to ≥ it. The moments and
    ``p`` change on ``rows`` only."""
    m = exp_avg.index_select(0, rows).lerp_(g, 1 - beta1)
    v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    if max_exp_avg_sq is not None:
        v = torch.maximum(max_exp_avg_sq.index_select(0, rows), v)
        max_exp_avg_sq.index_copy_(0, rows, v)
    denom = v.sqrt().div_(bc2_sqrt).add_(eps)
    new = p.index_select(0, rows).sub_(m.div(denom).mul_(step_size))
    if min_value is not None:
        new.clamp_(min=min_value)
    p.index_copy_(0, rows, new)


def _lazy_adam_rows_(
    p: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    rows: torch.Tensor,
    g: torch.Tensor,
    step_size: torch.Tensor,
    bc2_sqrt: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """Lazy Adam on ``rows`` (ascending, unique) in place, given each row's step size lr/(1 − β1^s)
    and √(1 − β2^s) as (rows, 1, …) tensors: the moments and ``p`` change on those rows only
    (:func:`adam_rows_`'s formula, compiled as one kernel)."""
    m = exp_avg.index_select(0, rows).lerp(g, 1 - beta1)
    v = exp_avg_sq.index_select(0, rows) * beta2 + (1 - beta2) * g * g
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    p.index_copy_(0, rows, p.index_select(0, rows) - m / (v.sqrt() / bc2_sqrt + eps) * step_size)


LAZY_ADAM = Kernel(_lazy_adam_rows_, "sparse_adam", "optimizer.fused=false")
