"""Builders of the look-ahead tests: tiny models with an Adam or row-sparse Adam Θ optimizer and
g_t in ``.grad``, and the comparison of the fused look-ahead with the autograd replay."""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import torch

from lopt.lookahead import dispatch, fused
from lopt.lookahead.dispatch import lookahead_validation_loss
from lopt.lookahead.state import REPLAY
from lopt.models.granularity import GRANULARITY_NAMES, LambdaGranularity
from lopt.models.mf import MatrixFactorization
from lopt.optim.row_sparse import RowSparseAdam
from tests.helpers import lambda_models
from tests.helpers.lambda_models import TRAIN, VALID, train_backward

LEARNABLE = [n for n in GRANULARITY_NAMES if n != "fix"]
BIG_CLIP = 1e6  # a clip that never binds: the fast path must still be taken
EXPERIMENT_CLIP = 100.0  # the experiments' Θ clip: inactive on the tiny models, so the fused path is taken

ADAMS: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.05, amsgrad=True),
    "adam_maximize": lambda ps: torch.optim.Adam(ps, lr=0.05, maximize=True),
    "adam_fused_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.05, amsgrad=True, fused=True),
    "adamw_wd0": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.0, foreach=True),
}


def build_adam(opt_name: str, gran_name: str, prior_steps: int, dtype: torch.dtype = torch.float64):  # type: ignore[no-untyped-def]
    model, gran, opt = lambda_models.build(ADAMS[opt_name], gran_name, dtype=dtype, prior_steps=prior_steps)
    train_backward(model, opt)
    return model, gran, opt


def lambda_grads(model, gran, opt, clip, *, fast: bool, compiled: bool = False):  # type: ignore[no-untyped-def]
    """(loss, [(param, coalesced grad or dense grad)]) with the fast path forced on or off."""
    gran.zero_grad(set_to_none=True)
    calls = []
    real = fused.validation_loss

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    with mock.patch.object(fused, "validation_loss", spy):
        with mock.patch.object(dispatch, "capability", (lambda *a: REPLAY) if not fast else dispatch.capability):
            loss = lookahead_validation_loss(
                model, opt, gran, TRAIN, VALID, scope="batch", scale=1.0, clip_norm=clip, compiled=compiled
            )
    assert bool(calls) == fast, "the fast path was (not) taken as intended"
    loss.backward()
    grads = []
    for p in gran.parameters():
        g = p.grad
        grads.append(("sparse", g.coalesce()) if g.is_sparse else ("dense", g))
    return loss.detach(), grads


def assert_same_lambda_grads(got: list, want: list) -> None:  # type: ignore[type-arg]
    """Two :func:`lambda_grads` gradient lists are equal bit for bit (sparse ones: the same rows)."""
    for (kind_got, g), (kind_want, w) in zip(got, want, strict=True):
        assert kind_got == kind_want
        if kind_got == "sparse":
            assert torch.equal(g.indices(), w.indices())
            g, w = g.values(), w.values()
        assert torch.equal(g, w)


def assert_fast_equals_autograd(model, gran, opt, clip: float | None, nonzero_above: float) -> None:  # type: ignore[no-untyped-def]
    """The fast path (asserted taken) and the autograd path give the same loss bit for bit (the
    forward uses the same ops) and the same Λ-gradient (the same sparse rows, zero-valued ones
    included; values to 1e-10), some of it above ``nonzero_above``."""
    slow_loss, slow = lambda_grads(model, gran, opt, clip, fast=False)
    fast_loss, fast = lambda_grads(model, gran, opt, clip, fast=True)
    assert torch.equal(fast_loss, slow_loss)
    nonzero = 0
    for (kind_s, gs), (kind_f, gf) in zip(slow, fast, strict=True):
        assert kind_s == kind_f
        if kind_s == "sparse":
            assert torch.equal(gs.indices(), gf.indices())
            gs, gf = gs.values(), gf.values()
        torch.testing.assert_close(gf, gs, rtol=1e-10, atol=1e-13)
        nonzero += int((gs.abs() > nonzero_above).sum())
    assert nonzero > 0


def build_sparse_adam(
    gran_name: str, prior_steps: int, *, sparse_grad: bool = True, dtype: torch.dtype = torch.float64
) -> tuple[MatrixFactorization, LambdaGranularity, RowSparseAdam]:
    """A tiny model with RowSparseAdam whose per-row step counts ``prior_steps`` real steps on small
    random batches made unequal, and g_t of TRAIN in its ``.grad`` (row-sparse if ``sparse_grad``)."""
    model, gran, opt = lambda_models.build(
        lambda ps: RowSparseAdam(ps, lr=0.05), gran_name, dtype=dtype, sparse_grad=sparse_grad, prior_steps=prior_steps
    )
    train_backward(model, opt)
    assert model.user_factors.grad.is_sparse == sparse_grad
    return model, gran, opt
