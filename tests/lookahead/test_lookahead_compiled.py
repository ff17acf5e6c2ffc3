"""The look-ahead's fused kernels through torch.compile (``model.compile_lookahead``): the same loss
and Λ-gradient as the eager kernels, no recompilation from step to step, and an eager fallback
when compiling fails."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from lopt.lookahead import fused
from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import MatrixFactorization
from tests.helpers.lambda_models import lambda_opt_iteration
from tests.helpers.lookahead import BIG_CLIP, EXPERIMENT_CLIP, build_adam, build_sparse_adam, lambda_grads

KERNELS = ("REPLAY", "CLIP_SQ", "BPR", "LAMBDA_GRAD")


@pytest.fixture(autouse=True)
def fresh_dynamo():  # type: ignore[no-untyped-def]
    """Every test compiles from scratch in memory (inductor's on-disk cache keeps that cheap)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _assert_same(got: list, want: list, rtol: float, atol: float) -> None:
    for (kind_w, gw), (kind_g, gg) in zip(want, got, strict=True):
        assert kind_w == kind_g
        if kind_w == "sparse":
            assert torch.equal(gw.indices(), gg.indices())
            gw, gg = gw.values(), gg.values()
        torch.testing.assert_close(gg, gw, rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("opt_name", "gran_name", "prior_steps"),
    [
        ("adam", "d", 3),  # one λ tensor shared by both sides
        ("adam", "du", 0),  # first Adam step (no state yet); row-stored users, broadcast items
        ("adam", "dui", 3),
        ("adam", "u", 3),  # row-stored (|U|, 1) users, fixed items
        ("adam_amsgrad", "dui", 3),
        ("adam_maximize", "di", 3),
    ],
)
def test_compiled_kernels_equal_eager(opt_name: str, gran_name: str, prior_steps: int) -> None:
    _assert_compiled_equals_eager(*build_adam(opt_name, gran_name, prior_steps), BIG_CLIP, min_graphs=3)


def _assert_compiled_equals_eager(model, gran, opt, clip: float, min_graphs: int) -> None:  # type: ignore[no-untyped-def]
    """The fused path's loss and Λ-gradient, compiled (at least ``min_graphs`` graphs, no
    fallback) and eager: the same to rounding."""
    eager_loss, eager = lambda_grads(model, gran, opt, clip, fast=True, compiled=False)
    compiled_loss, compiled = lambda_grads(model, gran, opt, clip, fast=True, compiled=True)
    assert counters["stats"]["unique_graphs"] >= min_graphs, "the kernels were not compiled"
    assert not any(getattr(fused, k)._failed for k in KERNELS)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-12, atol=0.0)
    _assert_same(compiled, eager, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("gran_name", "prior_steps", "sparse_grad"),
    [("d", 3, True), ("dui", 3, True), ("du", 0, True), ("di", 3, False)],
)
def test_compiled_row_sparse_adam_kernels_equal_eager(gran_name: str, prior_steps: int, sparse_grad: bool) -> None:
    """RowSparseAdam's per-row variant (per-row Adam constants, the untouched-row mask, gradient
    rows read from the sparse gradient) and the clip check on it, compiled."""
    model, gran, opt = build_sparse_adam(gran_name, prior_steps, sparse_grad=sparse_grad)
    _assert_compiled_equals_eager(model, gran, opt, EXPERIMENT_CLIP, min_graphs=4)  # CLIP_SQ compiled too


@pytest.mark.slow
def test_compiled_kernels_float32() -> None:
    model, gran, opt = build_adam("adam", "dui", 3, dtype=torch.float32)
    eager_loss, eager = lambda_grads(model, gran, opt, None, fast=True, compiled=False)
    compiled_loss, compiled = lambda_grads(model, gran, opt, None, fast=True, compiled=True)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=0.0)
    _assert_same(compiled, eager, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_no_recompilation_from_step_to_step() -> None:
    """Adam's bias corrections, the learning rate and the batch sizes change every step; after the
    first two steps (Adam without, then with state) nothing is compiled again."""
    torch.manual_seed(0)
    n_users, n_items, dim = 40, 30, 6
    model = MatrixFactorization(n_users, n_items, dim, init_std=0.5)
    gran = LambdaGranularity("du", n_users, n_items, dim, init=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    lam_opt = torch.optim.SGD(gran.parameters(), lr=10.0)
    graphs = []
    for step in range(6):
        gen = torch.Generator().manual_seed(step)
        n_train, n_valid = 24 + 3 * step, 18 + 2 * step
        train = (
            torch.arange(n_train) % n_users,
            torch.randint(0, n_items, (n_train,), generator=gen),
            torch.randint(0, n_items, (n_train,), generator=gen),
        )
        valid = (
            torch.arange(4, 4 + n_valid) % n_users,
            torch.randint(0, n_items, (n_valid,), generator=gen),
            torch.randint(0, n_items, (n_valid,), generator=gen),
        )
        lambda_opt_iteration(model, gran, opt, lam_opt, train, valid, clip=BIG_CLIP, compiled=True)
        sched.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] > 0
    assert graphs[2:] == [graphs[1]] * 4, f"recompiled: unique graphs per step {graphs}"
    assert not any(getattr(fused, k)._failed for k in KERNELS)


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """No C++ compiler, an inductor bug: the run goes on with the eager kernels, saying so once."""

    def broken_compile(fn, **kwargs):  # type: ignore[no-untyped-def]
        def call(*args):  # type: ignore[no-untyped-def]
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found (simulated)")

        return call

    for name in KERNELS:
        monkeypatch.setattr(fused, name, fused._kernel(getattr(fused, name).fn))
    monkeypatch.setattr(torch, "compile", broken_compile)
    model, gran, opt = build_adam("adam", "dui", 2)
    eager_loss, eager = lambda_grads(model, gran, opt, BIG_CLIP, fast=True, compiled=False)
    with caplog.at_level(logging.WARNING, logger="lopt"):
        for _ in range(2):
            fallback_loss, fallback = lambda_grads(model, gran, opt, BIG_CLIP, fast=True, compiled=True)
    assert torch.equal(fallback_loss, eager_loss)
    _assert_same(fallback, eager, rtol=0.0, atol=0.0)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile of the look-ahead kernel" in r.getMessage()]
    assert len(warnings) == len(KERNELS), warnings  # once per kernel, not once per call
    assert all("InvalidCxxCompiler" in w and "model.compile_lookahead=false" in w for w in warnings)
