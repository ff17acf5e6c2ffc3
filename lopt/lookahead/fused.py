"""The look-ahead's common case as a few fused kernels with a hand-written Λ-gradient.

Θ optimizer Adam/AdamW (weight_decay 0) or the lazy :class:`lopt.optim.row_sparse.RowSparseAdam`,
penalty scope "batch", Θ clip none or surely inactive, no look-ahead dropout
(:func:`lopt.lookahead.dispatch.lookahead_validation_loss` dispatches here, after
:func:`lopt.lookahead.state.capability` and the clip check of :mod:`lopt.lookahead.clip`).
Then l(V; Θ̄_{t+1}(Λ)) and ∂l/∂Λ need only elementwise work on the rows the validation batch
touches, one gather and one scatter per validation triple, and the train batch's rows for the
clip check: O((|B| + |V|)·d), never O((|U| + |I|)·d).

For a row r of one side, with c_r = 2·count_r/|B| (count_r: occurrences of r in the train batch,
0 for rows absent from it) and s = ±1 (``maximize``):
g = s·(g_bpr + c_r·λ_r⊙θ_r), m' = lerp(m, g, 1−β1), v' = β2·v + (1−β2)·g², ṽ = max(v_max, v')
(amsgrad; else v'), D = sqrt(ṽ)/sqrt(1−β2^t) + eps, θ̄ = θ − α·m'/D with α = lr/(1−β1^t), and
elementwise

    ∂θ̄/∂g = −α(1−β1)/D + α·m'/D² · w·(1−β2)·g / (sqrt(ṽ)·sqrt(1−β2^t)),

w = ∂ṽ/∂v' (1 if v' > v_max, ½ at a tie — torch.maximum's convention —, 0 below), the second
term 0 where ṽ = 0 (the ``safe_sqrt`` convention of the replay). The replay kernel
returns θ̄ and K = ∂θ̄/∂λ = ∂θ̄/∂g · s·c_r·θ_r together, so the backward is ∂l/∂θ̄ ⊙ K summed to
λ's stored shape; ∂l/∂θ̄ comes from the validation BPR (softplus' = sigmoid, scattered over the
occurrences with ``index_add_``). Rows absent from the train batch have c_r = 0, hence K = 0.

RowSparseAdam (lazy Adam; no amsgrad, no maximize) differs in two ways. Its bias corrections use
each row's own step count: t is s_r, the row's count after this step's increment, so α and
sqrt(1−β2^t) are (n, 1) tensors (Python floats for dense Adam), and θ̄ = θ − (m'/D)·α in its op
order. And it moves only the rows its gradient holds (:func:`lopt.models.rows.touched`):
a validation row a row-sparse g_t lacks keeps θ̄ = θ exactly and K = 0. g_t[rows] is gathered
from the sparse gradient's values (:class:`lopt.models.rows.GradRows`: the rows'
positions among the held ones), which is never densified.

Kernels are pure tensor functions (no input is modified) run under ``no_grad``. With
``compiled=True`` each runs through ``torch.compile`` (dynamic shapes: one compilation serves
every batch; Adam's step-dependent constants are not specialized; the per-row variant compiles
once more): one fused loop per kernel with the row gathers inside it, instead of ~15 separate
passes each allocating a temporary. Compiling happens once per process and kernel (seconds;
cached on disk by inductor); if it fails the reason is logged once and the eager kernels are used.
Eagerly, the forward uses the replay's tensor ops in the same order, so its loss is bit-identical
to the replay's (for RowSparseAdam too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lopt.lookahead.state import ParamState
from lopt.models.granularity import LambdaGranularity
from lopt.models.regularizer import FactorModel, grad_record
from lopt.models.rows import BatchRows, GradRows, TripleRows, grad_of, grad_source, row_grad, unique_counts
from lopt.optim.compiled import Kernel
from lopt.types import Triples


# ---------------------------------------------------------------------------- kernels
def _regularized_grad_rows(
    theta: torch.Tensor,
    grad: torch.Tensor,
    grad_idx: torch.Tensor,
    grad_held: torch.Tensor | None,
    lam: torch.Tensor,
    rows: torch.Tensor,
    counts: torch.Tensor,
    two_over_n: float,
    lam_rowwise: bool,
    regularized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(θ[rows], c = 2·count/|B| as (n, 1), g[rows] + c·λ[rows]⊙θ[rows]): the rows' parameters and
    regularized Θ-gradient (``lam`` row-stored if ``lam_rowwise``, else broadcast (1, k)). g[rows]
    is ``grad[grad_idx]`` (:class:`lopt.models.rows.GradRows`), zero where ``grad_held``
    ((n, 1) bool, or None: everywhere held) is False. ``regularized``: ``grad`` holds the
    regularized gradient already (the train rows', :meth:`_Side.regularized_train_grad`), taken
    as it is."""
    p = theta.index_select(0, rows)
    coef = counts.to(p.dtype).unsqueeze(1) * two_over_n
    g = grad.index_select(0, grad_idx)
    if grad_held is not None:
        g = g.masked_fill_(~grad_held, 0.0)
    if regularized:
        return p, coef, g
    lam_rows = lam.index_select(0, rows) if lam_rowwise else lam
    return p, coef, g.add_(coef * lam_rows * p)


def adam_lookahead(
    p: torch.Tensor,
    coef: torch.Tensor,
    g: torch.Tensor,
    exp_avg: torch.Tensor | None,
    exp_avg_sq: torch.Tensor | None,
    max_exp_avg_sq: torch.Tensor | None,
    step_size: float | torch.Tensor,
    beta1: float,
    beta2: float,
    bc2_sqrt: float | torch.Tensor,
    eps: float,
    negate: bool,
    state_is_temporary: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(θ̄, K = ∂θ̄/∂λ) of one Adam step on rows (module docstring), all (n, d): ``p`` the rows'
    parameters, ``coef`` (n, 1) their c_r, ``g`` their regularized gradient (a temporary: negated
    in place if ``negate``), ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` their Adam state (None:
    none yet; no amsgrad for the last), overwritten only if ``state_is_temporary`` (gathered
    copies; else the optimizer's own tensors, only read). ``step_size`` and ``bc2_sqrt``: Python
    floats (one step count) or (n, 1) tensors (per-row counts)."""
    if negate:
        g = g.neg_()
    if exp_avg is None:
        m = (1 - beta1) * g
    else:
        m = exp_avg.lerp_(g, 1 - beta1) if state_is_temporary else exp_avg.lerp(g, 1 - beta1)
    if exp_avg_sq is None:
        v = (1 - beta2) * g * g
    else:
        v = (exp_avg_sq.mul_(beta2) if state_is_temporary else exp_avg_sq.mul(beta2)).addcmul_(g, g, value=1 - beta2)
    held = max_exp_avg_sq
    v_hat = v if held is None else torch.maximum(held, v)
    root = v_hat.sqrt()
    denom = root.div(bc2_sqrt).add_(eps)
    if isinstance(step_size, torch.Tensor):  # RowSparseAdam's per-row update, in its op order
        new = p - m.div(denom).mul_(step_size)
    else:
        new = torch.addcdiv(p, m, denom, value=-step_size)
    # ∂θ̄/∂g (module docstring), then · ∂g/∂λ = s·c_r·θ_r; in place on fresh temporaries (fewer
    # allocations eagerly, where they dominate at this size; the same fused loop when compiled)
    through_v = torch.mul(m, g).div_((denom * denom).mul_(root)).mul_(step_size * (1 - beta2) / bc2_sqrt)
    if held is not None:
        through_v = through_v.mul_(torch.where(v > held, 1.0, torch.where(v == held, 0.5, 0.0)).to(v.dtype))
    through_v = through_v.masked_fill_(root == 0, 0.0)
    dnew_dlam = through_v.sub_(denom.reciprocal().mul_(step_size * (1 - beta1))).mul_(coef).mul_(p)
    if negate:
        dnew_dlam = dnew_dlam.neg_()
    return new, dnew_dlam


def _replay_kernel(
    theta: torch.Tensor,
    grad: torch.Tensor,
    grad_idx: torch.Tensor,
    moving: torch.Tensor | None,
    exp_avg: torch.Tensor | None,
    exp_avg_sq: torch.Tensor | None,
    max_exp_avg_sq: torch.Tensor | None,
    lam: torch.Tensor,
    rows: torch.Tensor,
    counts: torch.Tensor,
    two_over_n: float,
    step_size: float | torch.Tensor,
    beta1: float,
    beta2: float,
    bc2_sqrt: float | torch.Tensor,
    eps: float,
    lam_rowwise: bool,
    negate: bool,
    grad_held: torch.Tensor | None = None,
    regularized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(θ̄[rows], K = ∂θ̄[rows]/∂λ[rows]), both (len(rows), d); λ is ``lam[rows]`` if ``lam_rowwise``
    else ``lam`` broadcast ((1, k)); ``counts`` (len(rows),) are the train-batch occurrences; g[rows]
    is ``grad[grad_idx]``, zero where ``grad_held`` is False, and already regularized if
    ``regularized`` (:func:`_regularized_grad_rows`). ``step_size`` and ``bc2_sqrt`` are Python
    floats (one step count) or (len(rows), 1) tensors (per-row counts); rows where ``moving``
    ((n, 1) bool; None: every row) is False keep θ̄ = θ and K = 0."""
    p, coef, g = _regularized_grad_rows(
        theta, grad, grad_idx, grad_held, lam, rows, counts, two_over_n, lam_rowwise, regularized
    )
    state = [None if t is None else t.index_select(0, rows) for t in (exp_avg, exp_avg_sq, max_exp_avg_sq)]
    new, dnew_dlam = adam_lookahead(p, coef, g, *state, step_size, beta1, beta2, bc2_sqrt, eps, negate, True)
    if moving is not None:  # lazy Adam leaves rows without a gradient as they are
        new = torch.where(moving, new, p)
        dnew_dlam = dnew_dlam.masked_fill_(~moving, 0.0)
    return new, dnew_dlam


def _clip_sq_kernel(*rows_args: Any) -> torch.Tensor:
    """Σ over ``rows`` of ‖g[r] + 2·count_r/|B|·λ[r]⊙θ[r]‖² (0-dim), the arguments those of
    :func:`_regularized_grad_rows`: one side's share of the squared norm of the regularized
    Θ-gradient (the train batch's rows hold all of it)."""
    g = _regularized_grad_rows(*rows_args)[2]
    return (g * g).sum()


def _bpr_kernel(
    new_p: torch.Tensor,
    new_q: torch.Tensor,
    k_u: torch.Tensor,
    k_i: torch.Tensor,
    user_idx: torch.Tensor,
    pos_idx: torch.Tensor,
    neg_idx: torch.Tensor,
    user_terms: str,
    item_terms: str,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The validation BPR loss (0-dim, as ``bpr_loss``) and, in the same pass, the per-triple
    terms of its Λ-gradient (∂out/∂l = 1), one (|V|, d) tensor per side or None:

    * ``"scatter"`` (row-stored λ): ∂l/∂p̄_u resp. ∂l/∂q̄_j (∂l/∂q̄_i = −∂l/∂q̄_j), to be
      scattered onto the rows;
    * ``"sum"`` (broadcast λ): the terms of ∂l/∂λ = Σ_t ∂l/∂θ̄[t] ⊙ K[t], to be summed over t
      (no scatter; the sum is left to the caller: inductor's loops for a reduction over rows are
      slow on the CPU); ``"sum_both"`` on the user side when both sides share one λ tensor: the
      items' terms are added to the users' (the item side then returns None);
    * ``"none"``: not needed.

    softplus' as torch's softplus backward: sigmoid(x), exactly 1 above its threshold 20."""
    pu = new_p.index_select(0, user_idx)
    qi = new_q.index_select(0, pos_idx)
    qj = new_q.index_select(0, neg_idx)
    pos = (pu * qi).sum(-1)
    neg = (pu * qj).sum(-1)
    x = neg - pos
    loss = F.softplus(x).mean()
    if user_terms == "none" and item_terms == "none":
        return loss, None, None
    dx = (torch.where(x > 20.0, torch.ones_like(x), torch.sigmoid(x)) / x.numel()).unsqueeze(1)
    d_user = d_item = None
    if item_terms != "none" or user_terms == "sum_both":
        d_item = pu * dx
        if item_terms != "scatter":
            d_item = d_item * (k_i.index_select(0, neg_idx) - k_i.index_select(0, pos_idx))
    if user_terms != "none":
        d_user = (qj - qi) * dx
        if user_terms != "scatter":
            d_user = d_user * k_u.index_select(0, user_idx)
        if user_terms == "sum_both":
            assert d_item is not None
            d_user, d_item = d_user + d_item, None
    return loss, d_user, d_item


def _lambda_grad_kernel(
    d_new: torch.Tensor, dnew_dlam: torch.Tensor, hit: torch.Tensor, width_one: bool
) -> torch.Tensor:
    """∂l/∂λ[rows[hit]] ((len(hit), k)) from ∂l/∂θ̄[rows] and K = ∂θ̄[rows]/∂λ[rows] ((n, d) each)."""
    prod = d_new.index_select(0, hit) * dnew_dlam.index_select(0, hit)
    return prod.sum(1, keepdim=True) if width_one else prod


def _kernel(fn: Callable[..., Any]) -> Kernel:
    return Kernel(fn, "look-ahead", "model.compile_lookahead=false")


#: One side: (Θ parameter, where its g_t holds the train rows, its λ storage, whether that storage
#: is row-wise, the train batch's unique rows of the side, their occurrence counts).
ClipSide = tuple[nn.Parameter, GradRows, torch.Tensor, bool, torch.Tensor, torch.Tensor]

REPLAY = _kernel(_replay_kernel)
CLIP_SQ = _kernel(_clip_sq_kernel)
BPR = _kernel(_bpr_kernel)
LAMBDA_GRAD = _kernel(_lambda_grad_kernel)


# ---------------------------------------------------------------------------- the fused look-ahead
class _Side:
    """One side (P or Q) of a Λ-step: the validation rows, their train-batch counts, the Adam
    constants and the λ storage; ``rows`` must be ascending and unique."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        param: nn.Parameter,
        lam_storage: torch.Tensor,
        lam_rowwise: bool,
        rows: torch.Tensor,
        batch_rows: torch.Tensor | None,
        n_batch: int,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        read = ParamState(optimizer, param)
        self.param = param
        self.lam_storage, self.lam_rowwise = lam_storage, lam_rowwise
        self.rows = rows
        self.two_over_n = 2.0 / n_batch
        self.adam = read.adam_constants(rows, param.detach())
        self.negate = read.flag("maximize")
        #: Adam's state tensors (whole, gathered inside the kernel; max_exp_avg_sq only with amsgrad)
        self.moments = (
            read.tensor("exp_avg"),
            read.tensor("exp_avg_sq"),
            read.tensor("max_exp_avg_sq") if read.flag("amsgrad") else None,
        )
        # the train batch's rows: all that the penalty (and the clip norm) touches (``train``:
        # their unique rows and counts, when already computed)
        if train is None:
            assert batch_rows is not None
            train = unique_counts(batch_rows, param.shape[0])
        self.train_rows, self.train_counts = train
        found = torch.searchsorted(self.train_rows, rows).clamp_(max=max(self.train_rows.numel() - 1, 0))
        hit_mask = self.train_rows.index_select(0, found) == rows
        #: occurrences of each validation row in the train batch (0: absent, no Λ-dependence)
        self.counts = torch.where(hit_mask, self.train_counts.index_select(0, found), 0)
        #: positions (in ``rows``) of the rows the train batch penalizes: where Λ matters
        self.hit = torch.nonzero(hit_mask, as_tuple=True)[0]
        #: where g_t[rows] (``held``: lazy Adam's moving rows, None for a dense gradient) and
        #: g_t[train rows] are
        self.grad, self.train_grad = self._grad_sources(found, hit_mask)
        self._found, self._hit_mask = found, hit_mask.unsqueeze(1)
        #: g_t is zero outside the train rows (a row-sparse g_t holding exactly them, or a dense
        #: one its model records so): the validation rows' regularized gradient can then be read
        #: from the train rows' one (:meth:`regularized_train_grad`)
        self.grad_only_on_train_rows = self.train_grad is not None
        self._regularized: torch.Tensor | None = None

    def regularized_train_grad(self) -> torch.Tensor:
        """g_t + ∂Ω/∂Θ on the train batch's rows at the current Λ ((len(train_rows), d)), computed
        once per Λ-step: the clip check's norm and, where g_t is zero outside those rows, the
        look-ahead's validation rows read it (eager kernels)."""
        if self._regularized is None:
            param, grad, storage, rowwise, rows, counts = self.clip_side()
            self._regularized = _regularized_grad_rows(
                param.detach(), *grad, storage.detach(), rows, counts, self.two_over_n, rowwise
            )[2]
        return self._regularized

    def _grad_sources(self, found: torch.Tensor, hit_mask: torch.Tensor) -> tuple[GradRows, GradRows | None]:
        """:func:`grad_source` of the validation rows and of the train rows (None: not located yet).
        A row-sparse g_t that holds exactly the train batch's rows (as the model's sparse backward
        leaves it) reuses the validation rows' search among the train rows."""
        held, values = row_grad(grad_of(self.param))
        train = self.train_rows
        if held is not None and held.numel() == train.numel() and torch.equal(held, train):
            values = values.detach()  # a plain tensor, not a view of the sparse one (torch.compile)
            every = torch.arange(train.numel(), device=train.device)
            return GradRows(values, found, hit_mask.unsqueeze(1)), GradRows(values, every, None)
        return grad_source(self.param, self.rows), None

    def clip_side(self) -> ClipSide:
        train_grad = self.train_grad if self.train_grad is not None else grad_source(self.param, self.train_rows)
        return self.param, train_grad, self.lam_storage, self.lam_rowwise, self.train_rows, self.train_counts

    def replay(self, compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        grad: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] = self.grad
        grad_held, regularized = None, False
        if not compiled and self._regularized is not None and self.grad_only_on_train_rows:
            # the validation rows' regularized gradient: the train rows' one where they are train
            # rows, zero elsewhere (g_t is zero there, and so is the penalty) — the same values
            moving = self.grad.held  # lazy Adam: the rows g_t holds; dense Adam: every row (None)
            grad = (self._regularized, self._found, moving)
            grad_held, regularized = self._hit_mask, True
        return REPLAY(
            compiled,
            self.param.detach(),
            *grad,
            *self.moments,
            self.lam_storage.detach(),
            self.rows,
            self.counts,
            self.two_over_n,
            *self.adam,
            self.lam_rowwise,
            self.negate,
            grad_held,
            regularized,
        )

    def lambda_grad(
        self,
        terms: torch.Tensor,
        idx: torch.Tensor,
        neg_idx: torch.Tensor | None,
        dnew_dlam: torch.Tensor,
        scale: torch.Tensor,
        compiled: bool,
    ) -> torch.Tensor:
        """∂l/∂(λ storage) · ``scale`` (∂out/∂l) from the side's terms of :func:`_bpr_kernel`: for a
        broadcast storage summed to (1, k); for a row storage ∂l/∂θ̄[t] scattered onto the rows
        (``idx``; items: + at ``neg_idx``, − at ``idx`` = the positives) and a sparse COO gradient
        on the hit rows — the only rows whose λ the loss depends on (coalesced)."""
        storage = self.lam_storage
        if not self.lam_rowwise:
            return terms.sum_to_size(storage.shape).mul_(scale)
        d_new = dnew_dlam.new_zeros(dnew_dlam.shape)
        if neg_idx is None:
            d_new.index_add_(0, idx, terms)
        else:
            d_new.index_add_(0, neg_idx, terms).index_add_(0, idx, terms, alpha=-1)
        values = LAMBDA_GRAD(compiled, d_new, dnew_dlam, self.hit, storage.shape[1] == 1).mul_(scale)
        indices = self.rows.index_select(0, self.hit).unsqueeze(0)
        return torch.sparse_coo_tensor(indices, values, storage.shape, is_coalesced=True, check_invariants=False)


class _LookaheadBPR(torch.autograd.Function):
    """l(V; Θ̄_{t+1}(Λ)), differentiable in the two λ storages (which may be one tensor). The
    per-triple gradient terms are computed with the loss (one pass over the triples), the
    scatters onto rows and the reductions in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        lam_u: torch.Tensor,
        lam_i: torch.Tensor,
        side_u: _Side,
        side_i: _Side,  # type: ignore[override]
        user_idx: torch.Tensor,
        pos_idx: torch.Tensor,
        neg_idx: torch.Tensor,
        compiled: bool,
    ) -> torch.Tensor:
        new_p, k_u = side_u.replay(compiled)
        new_q, k_i = side_i.replay(compiled)
        need_u, need_i = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        shared = lam_u is lam_i and not side_u.lam_rowwise
        user_terms = (
            ("sum_both" if shared and need_i else "sum" if not side_u.lam_rowwise else "scatter") if need_u else "none"
        )
        item_terms = (
            ("none" if shared and need_u else "sum" if not side_i.lam_rowwise else "scatter") if need_i else "none"
        )
        loss, t_u, t_i = BPR(compiled, new_p, new_q, k_u, k_i, user_idx, pos_idx, neg_idx, user_terms, item_terms)
        ctx.sides, ctx.compiled = (side_u, side_i), compiled
        ctx.save_for_backward(t_u, t_i, k_u, k_i, user_idx, pos_idx, neg_idx)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        t_u, t_i, k_u, k_i, user_idx, pos_idx, neg_idx = ctx.saved_tensors
        side_u, side_i = ctx.sides
        grad_u = grad_i = None
        if t_u is not None:  # with a shared λ tensor: both sides' terms (grad_i stays None)
            grad_u = side_u.lambda_grad(t_u, user_idx, None, k_u, grad_out, ctx.compiled)
        if t_i is not None:
            grad_i = side_i.lambda_grad(t_i, pos_idx, neg_idx, k_i, grad_out, ctx.compiled)
        return grad_u, grad_i, None, None, None, None, None, None


def sides(
    model: FactorModel,
    optimizer: torch.optim.Optimizer,
    granularity: LambdaGranularity,
    train_batch: Triples,
    valid: TripleRows,
    train_rows: BatchRows | None = None,
) -> tuple[_Side, _Side]:
    """The user and item sides of the fused look-ahead on the validation batch's rows ``valid``
    (``train_rows``: the train batch's :func:`lopt.models.rows.batch_rows`, when already computed)."""
    users, pos, neg = train_batch
    n = users.numel()
    P, Q = model.user_factors, model.item_factors
    user_train = item_train = None
    if train_rows is not None:
        user_train = (train_rows.triples.user_rows, train_rows.user_counts)
        item_train = (train_rows.triples.item_rows, train_rows.item_counts)
    side_u = _Side(
        optimizer, P, granularity.user_storage, granularity.user_rowwise, valid.user_rows, users, n, user_train
    )
    side_i = _Side(
        optimizer,
        Q,
        granularity.item_storage,
        granularity.item_rowwise,
        valid.item_rows,
        torch.cat([pos, neg]) if item_train is None else None,
        n,
        item_train,
    )
    for side in (side_u, side_i):
        record = grad_record(model, side.param)
        grad = side.param.grad
        known = record.known_rows(grad) if record is not None and grad is not None else None
        if known is not None and torch.equal(known, side.train_rows):
            side.grad_only_on_train_rows = True
    return side_u, side_i


def validation_loss(
    granularity: LambdaGranularity, side_u: _Side, side_i: _Side, valid: TripleRows, compiled: bool = False
) -> torch.Tensor:
    """l(V; Θ̄_{t+1}(Λ)) for the fused case (:func:`lopt.lookahead.state.capability`, scope
    "batch", no dropout, the Θ clip none or surely inactive), differentiable in the λ storages;
    ``valid``: the validation batch's rows, as the sides were built on."""
    n_v = valid.user_idx.numel()
    return _LookaheadBPR.apply(
        granularity.user_storage,
        granularity.item_storage,
        side_u,
        side_i,
        valid.user_idx,
        valid.item_idx[:n_v],
        valid.item_idx[n_v:],
        compiled,
    )


__all__ = ["sides", "validation_loss"]
