"""Is the Θ gradient-norm clip surely inactive? (penalty scope "batch", CPU.)

When min(clip_norm / (‖g + ∂Ω/∂Θ‖ + 1e-6), 1) is surely 1 it is a constant with a zero derivative,
and both look-ahead paths skip the clip's graph. The check runs without autograd in O(|B|·d): the
train batch's rows hold the whole batch-scope regularized gradient (a row-sparse g_t holds no other
rows; it is read in place, never densified). It reads the norm (a host sync), so it runs on the
CPU only; elsewhere the clip is treated as possibly active.
"""

from __future__ import annotations

import math

import torch

from lopt.lookahead import fused
from lopt.lookahead.fused import ClipSide
from lopt.models.granularity import LambdaGranularity
from lopt.models.regularizer import FactorModel
from lopt.models.rows import grad_source, unique_counts
from lopt.types import Triples

#: The clip is known to be inactive when clip_norm / (norm + 1e-6) exceeds 1 by this margin.
CLIP_MARGIN = 1e-4


def _below(norm: float, clip_norm: float) -> bool:
    return math.isfinite(norm) and float(clip_norm) / (norm + 1e-6) > 1.0 + CLIP_MARGIN


def sides_inactive(sides: tuple[ClipSide, ...], n_batch: int, clip_norm: float, compiled: bool = False) -> bool:
    """True when the clip coefficient is surely 1, with a margin that rounding cannot flip (the
    squared norm by the fused kernel, compiled if ``compiled``; dense or row-sparse g_t)."""
    with torch.no_grad():
        sq = sum(
            float(
                fused.CLIP_SQ(
                    compiled,
                    param.detach(),
                    *grad,
                    storage.detach(),
                    rows,
                    counts,
                    2.0 / n_batch,
                    rowwise,
                )
            )
            for param, grad, storage, rowwise, rows, counts in sides
        )
    return _below(math.sqrt(sq), clip_norm)


def norm_inactive(sq_norm: float, clip_norm: float) -> bool:
    """:func:`sides_inactive` from the squared norm of the whole regularized gradient, computed
    already (:func:`lopt.lookahead.dense.lookahead`)."""
    return _below(math.sqrt(sq_norm), clip_norm)


def regularized_inactive(grads: tuple[torch.Tensor, ...], clip_norm: float) -> bool:
    """:func:`sides_inactive` from each side's regularized train-row gradient, computed already
    (:meth:`lopt.lookahead.fused._Side.regularized_train_grad`; the same sum as the eager kernel)."""
    with torch.no_grad():
        sq = sum(float((g * g).sum()) for g in grads)
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
    sides = []
    for theta, storage, rowwise, batch_rows in (
        (P, granularity.user_storage, granularity.user_rowwise, users),
        (Q, granularity.item_storage, granularity.item_rowwise, torch.cat([pos, neg])),
    ):
        rows, counts = unique_counts(batch_rows, theta.shape[0])
        sides.append((theta, grad_source(theta, rows), storage, rowwise, rows, counts))
    return sides_inactive(tuple(sides), users.numel(), clip_norm)


__all__ = ["CLIP_MARGIN", "ClipSide", "clip_is_inactive", "norm_inactive", "regularized_inactive", "sides_inactive"]
