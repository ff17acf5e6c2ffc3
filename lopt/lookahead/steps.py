"""The MF-BPR iteration's steps as pure functions (docs/method.md, "Training"), shared by the
LightningModules (:mod:`lopt.modules.fix`, :mod:`lopt.modules.lambda_opt`) and by the
benchmark's plain loop, so that what is timed without Lightning is the very step that trains.

One iteration: :func:`train_loss` (then its backward → g_t in ``.grad``), :func:`lambda_step`
(λOpt), :func:`theta_step`.
"""

from __future__ import annotations

from typing import Any

import torch

from lopt.lookahead.dense import DenseLookahead
from lopt.lookahead.dispatch import lookahead
from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import MatrixFactorization
from lopt.models.regularizer import add_penalty_grad_, add_penalty_grad_and_clip_rows_, clip_grad_norm_
from lopt.models.rows import BatchRows
from lopt.optim.lambda_optimizers import (
    LambdaAdam,
    LambdaRowSparseAdam,
    LambdaSGD,
    clip_lambda_grad_,
    set_grads_clip_and_step,
)
from lopt.types import Triples


def train_loss(model: MatrixFactorization, train_batch: Triples, rows: BatchRows | None = None) -> torch.Tensor:
    """The non-regularized BPR loss of the training batch (0-dim, with a graph to Θ). ``rows``: the
    batch's :func:`lopt.models.rows.batch_rows`, computed once per iteration and shared by its
    steps (None: computed here)."""
    users, pos, neg = train_batch
    return model.bpr_loss(users, pos, neg, rows.triples if rows is not None else None)


#: Λ optimizers that project every entry they update onto [0, ∞) themselves (exact types: a
#: subclass may change ``step``); :func:`lambda_step` skips its own full pass over Λ after them.
SELF_PROJECTING: tuple[type[torch.optim.Optimizer], ...] = (LambdaSGD, LambdaAdam, LambdaRowSparseAdam)
#: Λ optimizers whose step on a dense gradient that is zero on some rows is their step on the sparse
#: gradient without those rows (exact types): the look-ahead may hand them a dense Λ-gradient
#: (:mod:`lopt.lookahead.dense`). Not the row-sparse Adam, which moves only the rows it is given.
DENSE_GRAD_LAMBDA_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (LambdaSGD, LambdaAdam)


def lambda_step(
    model: MatrixFactorization,
    theta_optimizer: torch.optim.Optimizer,
    lambda_optimizer: Any,
    granularity: LambdaGranularity,
    train_batch: Triples,
    valid_batch: Triples,
    *,
    scope: str,
    scale: float,
    clip_norm: float | None,
    lambda_clip_norm: float | None,
    dropout: float,
    compiled: bool,
    rows: BatchRows | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Λ-step: the validation loss of the exact look-ahead Θ̄_{t+1}(Λ), its Λ-gradient, the Λ
    clip and the Λ optimizer's step. Needs g_t (the training backward) in the factors' ``.grad``;
    reads it and the Θ optimizer's state, never writes them. ``rows``: the train batch's
    :func:`lopt.models.rows.batch_rows` (None: computed where needed). Returns (the look-ahead
    validation loss, the Λ-gradient norm before clipping), both detached."""
    lambda_optimizer.zero_grad(set_to_none=True)
    result = lookahead(
        model,
        theta_optimizer,
        granularity,
        train_batch,
        valid_batch,
        scope=scope,
        scale=scale,
        clip_norm=clip_norm,
        dropout=dropout,
        compiled=compiled,
        train_rows=rows,
        dense_lambda_grad=type(lambda_optimizer) in DENSE_GRAD_LAMBDA_OPTIMIZERS,
    )
    if isinstance(result, DenseLookahead):
        # the whole-table route computed the Λ-gradient with the loss: it becomes .grad as it is,
        # without a backward through an attached loss (the same values: that backward scales by 1)
        valid_loss = result.loss
        grads = result.storage_grads(granularity)
        lambda_grad_norm = set_grads_clip_and_step(lambda_optimizer, grads, lambda_clip_norm)
    else:
        valid_loss = result
        valid_loss.backward()
        lambda_grad_norm = clip_lambda_grad_(list(granularity.parameters()), lambda_clip_norm)
        lambda_optimizer.step()
    # Λ ≥ 0 is guaranteed here, whatever the optimizer: after any optimizer but lopt's own projected
    # ones (which clamp every entry they write), Λ is clamped onto [0, ∞).
    if type(lambda_optimizer) not in SELF_PROJECTING:
        granularity.project_()
    return valid_loss.detach(), lambda_grad_norm


def theta_step(
    model: MatrixFactorization,
    theta_optimizer: Any,
    granularity: LambdaGranularity,
    train_batch: Triples,
    *,
    scope: str,
    scale: float,
    clip_norm: float | None,
    rows: BatchRows | None = None,
) -> torch.Tensor:
    """The Θ-step: add ∇_Θ Ω(B; Θ, Λ) to g_t in ``.grad``, clip the gradient norm, step the Θ
    optimizer (a torch optimizer or Lightning's wrapper of one). ``rows``: the train batch's
    :func:`lopt.models.rows.batch_rows` (None: computed here). Under scope "batch", with ``rows``
    given and both gradients recorded as zero outside them, the penalty and the clip are one
    pass over those rows (:func:`lopt.models.regularizer.add_penalty_grad_and_clip_rows_`, the
    same values). Returns the norm before clipping."""
    grad_norm = None
    if scope == "batch" and rows is not None:
        grad_norm = add_penalty_grad_and_clip_rows_(model, granularity, rows, train_batch[0].numel(), clip_norm)
    if grad_norm is None:
        add_penalty_grad_(model, granularity, train_batch, scope, scale, rows)
        grad_norm = clip_grad_norm_(model, clip_norm)
    theta_optimizer.step()
    return grad_norm


__all__ = ["DENSE_GRAD_LAMBDA_OPTIMIZERS", "SELF_PROJECTING", "lambda_step", "theta_step", "train_loss"]
