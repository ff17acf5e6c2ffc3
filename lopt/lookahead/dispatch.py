"""The exact row-wise look-ahead Θ̄_{t+1}(Λ) and its validation loss (docs/method.md, "Doing it at the
cost of one training step"): the dispatch between its two paths.

* :mod:`.fused` — the common case (Adam/AdamW with weight_decay 0 or the row-sparse lazy Adam,
  scope "batch", the Θ clip none or surely inactive, no dropout): hand-written kernels with an
  analytic Λ-gradient, on the rows the validation batch touches;
* :mod:`.dense` — the same case over whole tables, where they are small next to the batches and
  the caller takes a dense Λ-gradient (dense Adam/AdamW only);
* :mod:`.replay` — everything else: the per-optimizer row replays, differentiated by autograd.

Both read the Θ optimizer through :mod:`.state` (its one reader and capability check), the rows
through :mod:`.rows`, and decide whether the clip binds through :mod:`.clip`. On the fused case
they compute the same loss and Λ-gradient (tested).
"""

from __future__ import annotations

from typing import Any

import torch

from lopt.lookahead import dense, fused, replay
from lopt.lookahead.clip import norm_inactive, regularized_inactive, sides_inactive
from lopt.lookahead.replay import lookahead_rows, simulate_step_rows
from lopt.lookahead.state import FUSED, SUPPORTED_OPTIMIZERS, SUPPORTED_ROW_SPARSE, capability, unwrap
from lopt.models import regularizer
from lopt.models.granularity import LambdaGranularity
from lopt.models.regularizer import FactorModel
from lopt.models.rows import BatchRows, triple_rows
from lopt.types import Triples


def lookahead_validation_loss(
    model: FactorModel,
    theta_optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Triples,
    valid_batch: Triples,
    **options: Any,
) -> torch.Tensor:
    """l(V_t; Θ̄_{t+1}(Λ)): the BPR loss of ``valid_batch`` after the simulated Θ-step (a scalar whose
    graph reaches Λ only; Θ, g_t and the optimizer state are constants): :func:`lookahead` with
    these arguments (``options``: its keyword arguments), a whole-table result attached to Λ (its
    backward writes the Λ-gradient it carries)."""
    result = lookahead(model, theta_optimizer, granularity, train_batch, valid_batch, **options)
    return result.attach(granularity) if isinstance(result, dense.DenseLookahead) else result


def lookahead(
    model: FactorModel,
    theta_optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Triples,
    valid_batch: Triples,
    *,
    scope: str,
    scale: float,
    clip_norm: float | None,
    dropout: float = 0.0,
    compiled: bool = False,
    train_rows: BatchRows | None = None,
    dense_lambda_grad: bool = False,
) -> torch.Tensor | dense.DenseLookahead:
    """The look-ahead of :func:`lookahead_validation_loss`: its loss with a graph to Λ, or, where the
    whole-table route runs, that route's loss and dense Λ-gradient as computed
    (:class:`lopt.lookahead.dense.DenseLookahead`, which a caller may apply without autograd).

    Preconditions as :func:`lookahead_rows`. Only the rows ``valid_batch`` touches are simulated:
    cost O((|B|+|V|)·d) for scope "batch" (plus O((|U|+|I|)·d) for the clip norm under scope "all"),
    except by :mod:`.dense`, which simulates whole tables only where they are O(|B|+|V|) rows.
    ``dropout`` > 0 applies ``F.dropout`` (training mode) to the looked-ahead embeddings of each
    validation triple. The fused case runs :mod:`.fused` (its kernels through ``torch.compile`` if
    ``compiled``); a clip that may bind (always off the CPU, where checking costs a host sync) and
    every other case run :mod:`.replay`. ``train_rows``: the train batch's
    :func:`lopt.models.rows.batch_rows`, when already computed (the fused case reuses its rows and
    counts). ``dense_lambda_grad``: the caller takes a dense Λ-gradient (zero on the rows the loss
    does not depend on) as well as a row-sparse one, which lets the fused case run over whole
    tables where :func:`lopt.lookahead.dense.applies`.
    """
    P, Q = model.user_factors, model.item_factors
    regularizer.check_scope(scope)
    optimizer = unwrap(theta_optimizer)
    n_train, n_valid = train_batch[0].numel(), valid_batch[0].numel()
    fused_case = (
        dropout <= 0
        and scope == "batch"
        and n_valid > 0
        and n_train > 0
        and capability(optimizer, (P, Q)) == FUSED
        and (clip_norm is None or P.device.type == "cpu")
    )
    if fused_case and dense_lambda_grad and dense.applies(optimizer, model, n_train + n_valid, compiled):
        whole = dense.lookahead(model, optimizer, granularity, train_batch, valid_batch, compiled)
        if clip_norm is None or norm_inactive(float(whole.clip_sq), clip_norm):
            return whole
        fused_case = False  # the clip may bind: the replay
    valid = triple_rows(valid_batch, P.shape[0], Q.shape[0])
    if fused_case:
        side_u, side_i = fused.sides(model, optimizer, granularity, train_batch, valid, train_rows)
        if clip_norm is None:
            return fused.validation_loss(granularity, side_u, side_i, valid, compiled)
        if compiled:
            inactive = sides_inactive((side_u.clip_side(), side_i.clip_side()), n_train, clip_norm, compiled)
        else:  # the train rows' regularized gradient, computed once: the norm, then the look-ahead's
            shared = (side_u.regularized_train_grad(), side_i.regularized_train_grad())
            inactive = regularized_inactive(shared, clip_norm)
        if inactive:
            return fused.validation_loss(granularity, side_u, side_i, valid, compiled)
    options = {"scope": scope, "scale": scale, "clip_norm": clip_norm, "dropout": dropout}
    return replay.validation_loss(model, theta_optimizer, granularity, train_batch, valid, **options)


__all__ = [
    "SUPPORTED_OPTIMIZERS",
    "SUPPORTED_ROW_SPARSE",
    "lookahead",
    "lookahead_rows",
    "lookahead_validation_loss",
    "simulate_step_rows",
]
