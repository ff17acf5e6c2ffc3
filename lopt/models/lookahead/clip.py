"""Is the Θ gradient-norm clip surely inactive? (penalty scope "batch", CPU.)

When min(clip_norm / (‖g + ∂Ω/∂Θ‖ + 1e-6), 1) is surely 1 it is a constant with a zero derivative,
and both look-ahead paths skip the clip's graph. The check runs without autograd in O(|B|·d): the
train batch's rows hold the whole batch-scope regularized gradient. It reads the norm (a host
sync), so it runs on the CPU only; elsewhere the clip is treated as possibly active.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

# A module import: the regularizer imports .rows, so it may still be initializing when this runs.
import lopt.models.regularizer as regularizer
from lopt.models.lookahead import fused
from lopt.models.lookahead.rows import grad_of, grad_rows, unique_counts

if TYPE_CHECKING:
    from lopt.models.granularity import LambdaGranularity
    from lopt.models.regularizer import FactorModel
    from lopt.models.steps import Triples

#: The clip is known to be inactive when clip_norm / (norm + 1e-6) exceeds 1 by this margin.
CLIP_MARGIN = 1e-4

#: One side: (Θ parameter with g_t in ``.grad``, its λ storage, whether that storage is row-wise,
#: the train batch's unique rows of the side, their occurrence counts).
ClipSide = tuple[nn.Parameter, torch.Tensor, bool, torch.Tensor, torch.Tensor]


def _below(norm: float, clip_norm: float) -> bool:
    return math.isfinite(norm) and float(clip_norm) / (norm + 1e-6) > 1.0 + CLIP_MARGIN


def sides_inactive(sides: tuple[ClipSide, ...], n_batch: int, clip_norm: float, compiled: bool = False) -> bool:
    """True when the clip coefficient is surely 1 for dense Θ gradients, with a margin that rounding
    cannot flip (the squared norm by the fused kernel, compiled if ``compiled``)."""
    with torch.no_grad():
        sq = sum(
            float(
                fused.CLIP_SQ(
                    compiled,
                    param.detach(),
                    param.grad.detach(),
                    storage.detach(),
                    rows,
                    counts,
                    2.0 / n_batch,
                    rowwise,
                )
            )
            for param, storage, rowwise, rows, counts in sides
        )
    return _below(math.sqrt(sq), clip_norm)


def clip_is_inactive(
    model: FactorModel, granularity: LambdaGranularity, train_batch: Triples, clip_norm: float
) -> bool:
    """True when the clip coefficient of the Θ-step on ``train_batch`` is surely 1 (CPU only;
    False elsewhere). Dense or row-sparse Θ gradients."""
    P, Q = model.user_factors, model.item_factors
    if P.device.type != "cpu":
        return False
    users, pos, neg = train_batch
    if grad_of(P).is_sparse or grad_of(Q).is_sparse:
        return _sparse_inactive(model, granularity, train_batch, clip_norm)
    sides = tuple(
        (theta, storage, rowwise, *unique_counts(batch_rows, theta.shape[0]))
        for theta, storage, rowwise, batch_rows in (
            (P, granularity.user_storage, granularity.user_rowwise, users),
            (Q, granularity.item_storage, granularity.item_rowwise, torch.cat([pos, neg])),
        )
    )
    return sides_inactive(sides, users.numel(), clip_norm)


@torch.no_grad()
def _sparse_inactive(
    model: FactorModel, granularity: LambdaGranularity, train_batch: Triples, clip_norm: float
) -> bool:
    """:func:`clip_is_inactive` for row-sparse Θ gradients (the same sum over the train rows, the
    same margin)."""
    users, pos, neg = train_batch
    n, sq = users.numel(), 0.0
    for theta, lam_fn, batch_rows in (
        (model.user_factors, granularity.user_lambda, users),
        (model.item_factors, granularity.item_lambda, torch.cat([pos, neg])),
    ):
        rows, counts = unique_counts(batch_rows, theta.shape[0])
        g = grad_rows(theta, rows).add_(regularizer.batch_penalty_rows(theta, lam_fn, rows, counts, n))
        sq += float((g * g).sum())
    return _below(math.sqrt(sq), clip_norm)


__all__ = ["CLIP_MARGIN", "ClipSide", "clip_is_inactive", "sides_inactive"]
