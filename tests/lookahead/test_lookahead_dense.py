"""The whole-table look-ahead (:mod:`lopt.lookahead.dense`): taken where it applies and only there;
the same loss as the row kernels and the autograd replay bit for bit; the same Λ-gradient (bit
for bit where λ is row-stored at full width, to rounding where rows share it), dense and zero on
the rows the train batch does not penalize; the replay where the clip may bind; compiled, equal
to eager without recompiling from step to step."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from torch._dynamo.utils import counters

from lopt.lookahead import dense, dispatch, steps
from lopt.lookahead.dispatch import lookahead_validation_loss
from lopt.lookahead.state import REPLAY
from lopt.lookahead.steps import DENSE_GRAD_LAMBDA_OPTIMIZERS
from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import MatrixFactorization
from lopt.optim.lambda_optimizers import LambdaAdam, LambdaRowSparseAdam, LambdaSGD
from tests.helpers import lambda_models
from tests.helpers.lambda_models import (
    NI,
    NU,
    TRAIN,
    VALID,
    assert_lambda_grad_matches_finite_differences,
    lambda_opt_iteration,
    train_backward,
)
from tests.helpers.lookahead import ADAMS, BIG_CLIP, LEARNABLE, build_adam, build_sparse_adam

#: the row kernels' "scatter" storages: λ row-stored at full width, summed in the same order
FULL_WIDTH_ROWS = {"du": (True, False), "di": (False, True), "dui": (True, True)}
#: the thresholds as lopt sets them (the fixture below raises the eager one for the tiny model)
COMPILED_MAX, EAGER_MAX = dense.COMPILED_MAX_ROWS_PER_TRIPLE, dense.EAGER_MAX_ROWS_PER_TRIPLE


@pytest.fixture(autouse=True)
def whole_tables_for_the_tiny_model_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model has 16 rows for 11 triples: past the eager threshold, inside the compiled one.
    The tests run the eager kernels at the compiled threshold (the same arithmetic)."""
    monkeypatch.setattr(dense, "EAGER_MAX_ROWS_PER_TRIPLE", COMPILED_MAX)


def _grads(model, gran, opt, clip, *, path: str, compiled: bool = False):  # type: ignore[no-untyped-def]
    """(loss, [dense Λ-gradient per parameter]) by ``path``: "dense" (asserted taken), "rows" (the
    fused row kernels) or "replay" (autograd)."""
    gran.zero_grad(set_to_none=True)
    taken = []
    real = dense.lookahead

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        taken.append(1)
        return real(*args, **kwargs)

    replay = (lambda *a: REPLAY) if path == "replay" else dispatch.capability
    with mock.patch.object(dense, "lookahead", spy), mock.patch.object(dispatch, "capability", replay):
        loss = lookahead_validation_loss(
            model,
            opt,
            gran,
            TRAIN,
            VALID,
            scope="batch",
            scale=1.0,
            clip_norm=clip,
            compiled=compiled,
            dense_lambda_grad=path == "dense",
        )
    assert bool(taken) == (path == "dense"), f"the whole-table look-ahead was (not) taken on path {path}"
    loss.backward()
    return loss.detach(), [p.grad.to_dense() for p in gran.parameters()]


@pytest.mark.parametrize("clip", [None, BIG_CLIP], ids=["noclip", "inactive_clip"])
@pytest.mark.parametrize("prior_steps", [0, 3], ids=["first", "later"])
@pytest.mark.parametrize("opt_name", list(ADAMS))
@pytest.mark.parametrize("gran_name", LEARNABLE)
def test_dense_equals_rows_and_autograd(gran_name: str, opt_name: str, prior_steps: int, clip: float | None) -> None:
    model, gran, opt = build_adam(opt_name, gran_name, prior_steps)
    dense_loss, dense_grads = _grads(model, gran, opt, clip, path="dense")
    rows_loss, rows_grads = _grads(model, gran, opt, clip, path="rows")
    replay_loss, replay_grads = _grads(model, gran, opt, clip, path="replay")
    assert torch.equal(dense_loss, rows_loss) and torch.equal(dense_loss, replay_loss)
    nonzero = 0
    for got, rows, want in zip(dense_grads, rows_grads, replay_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(got, rows, rtol=1e-10, atol=1e-13)
        nonzero += int((got.abs() > (1e-8 if prior_steps else 0.0)).sum())
    assert nonzero > 0
    if gran_name in FULL_WIDTH_ROWS:  # the same terms scattered in the same order: bit for bit
        storages = (gran.user_storage, gran.item_storage)
        for storage, row_stored in zip(storages, FULL_WIDTH_ROWS[gran_name], strict=True):
            if row_stored:
                index = [i for i, p in enumerate(gran.parameters()) if p is storage][0]
                assert torch.equal(dense_grads[index], rows_grads[index])


@pytest.mark.parametrize("gran_name", ["d", "dui", "ui"])
def test_dense_lambda_gradient_matches_finite_differences(gran_name: str) -> None:
    model, gran, opt = build_adam("adam_amsgrad", gran_name, 3)
    kwargs = {"scope": "batch", "scale": 1.0, "clip_norm": BIG_CLIP, "dense_lambda_grad": True}
    with mock.patch.object(dense, "lookahead", wraps=dense.lookahead) as spy:
        assert_lambda_grad_matches_finite_differences(
            gran, lambda: lookahead_validation_loss(model, opt, gran, TRAIN, VALID, **kwargs)
        )
    assert spy.called


def test_dense_gradient_is_zero_where_the_train_batch_penalizes_nothing() -> None:
    """User 4, 5 and 6 and item 8 are not in the train batch: c_r = 0, so λ of those rows does
    not move the look-ahead."""
    model, gran, opt = build_adam("adam", "dui", 3)
    _, (grad_u, grad_i) = _grads(model, gran, opt, None, path="dense")
    assert grad_u.shape == (NU, gran.user_storage.shape[1]) and grad_i.shape == (NI, gran.item_storage.shape[1])
    assert torch.count_nonzero(grad_u[[4, 5, 6]]) == 0 and torch.count_nonzero(grad_i[8]) == 0
    assert torch.count_nonzero(grad_u[[0, 1]]) > 0


def test_a_clip_that_may_bind_takes_the_replay() -> None:
    model, gran, opt = build_adam("adam", "dui", 3)
    tiny = 1e-3  # binds on the tiny model
    with mock.patch.object(dispatch.replay, "validation_loss", wraps=dispatch.replay.validation_loss) as replay:
        got_loss, got = _grads(model, gran, opt, tiny, path="dense")
    assert replay.called
    want_loss, want = _grads(model, gran, opt, tiny, path="replay")
    assert torch.equal(got_loss, want_loss)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_not_taken_for_row_sparse_adam_or_large_tables() -> None:
    for sparse_grad in (True, False):  # lazy Adam: its per-row steps and untouched rows
        model, gran, opt = build_sparse_adam("dui", 3, sparse_grad=sparse_grad)
        assert not dense.applies(opt, model, 11, compiled=True)
        _grads(model, gran, opt, None, path="rows")
    model, gran, opt = build_adam("adam", "dui", 3)
    n = TRAIN[0].numel() + VALID[0].numel()
    assert EAGER_MAX < (NU + NI) / n <= COMPILED_MAX
    assert dense.applies(opt, model, n, compiled=True)
    with mock.patch.object(dense, "EAGER_MAX_ROWS_PER_TRIPLE", EAGER_MAX):
        assert not dense.applies(opt, model, n, compiled=False)
        _grads(model, gran, opt, None, path="rows")  # eager: asserts the whole-table path was not taken
    with mock.patch.object(dense, "COMPILED_MAX_ROWS_PER_TRIPLE", (NU + NI) / n - 0.01):
        assert not dense.applies(opt, model, n, compiled=True)


@pytest.mark.parametrize(
    ("make_lambda_opt", "dense_expected"),
    [
        (lambda ps: LambdaAdam(ps, lr=0.01, amsgrad=True), True),
        (lambda ps: LambdaSGD(ps, lr=0.1), True),
        (lambda ps: LambdaRowSparseAdam(ps, lr=0.01), False),  # moves only the rows it is given
        (lambda ps: torch.optim.SGD(ps, lr=0.1), False),  # not lopt's: its handling of zero rows unknown
    ],
    ids=["lambda_adam", "lambda_sgd", "row_sparse_adam", "torch_sgd"],
)
def test_lambda_step_takes_it_for_the_lambda_optimizers_that_allow_it(make_lambda_opt, dense_expected) -> None:  # type: ignore[no-untyped-def]
    model, gran, opt = lambda_models.build(ADAMS["adam"], "dui", prior_steps=3)
    lam_opt = make_lambda_opt(list(gran.parameters()))
    assert (type(lam_opt) in DENSE_GRAD_LAMBDA_OPTIMIZERS) == dense_expected
    with mock.patch.object(dense, "lookahead", wraps=dense.lookahead) as spy:
        lambda_opt_iteration(model, gran, opt, lam_opt, TRAIN, VALID, clip=BIG_CLIP)
    assert spy.called == dense_expected


@pytest.mark.parametrize("lambda_optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("gran_name", ["d", "du", "dui", "u"])
def test_iterations_with_a_dense_gradient_equal_the_sparse_ones(gran_name: str, lambda_optimizer: str) -> None:
    """Three λOpt iterations: Λ and Θ after them are those of the row kernels' sparse Λ-gradient
    (to rounding: the Λ clip's norm and the shared λ's sums add in another order)."""

    def run(whole_tables: bool):  # type: ignore[no-untyped-def]
        model, gran, opt = lambda_models.build(ADAMS["adam_amsgrad"], gran_name, prior_steps=2)
        params = list(gran.parameters())
        lam_opt = LambdaAdam(params, lr=0.01, amsgrad=True) if lambda_optimizer == "adam" else LambdaSGD(params, lr=0.5)
        gen = torch.Generator().manual_seed(7)
        with contextlib.nullcontext() if whole_tables else mock.patch.object(dense, "applies", return_value=False):
            for _ in range(3):
                train, valid = lambda_models.random_batch(gen, 6), lambda_models.random_batch(gen, 5)
                lambda_opt_iteration(model, gran, opt, lam_opt, train, valid, clip=BIG_CLIP, lambda_clip=1e-3)
        return [p.detach().clone() for p in (*gran.parameters(), *model.parameters())]

    for got, want in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("lambda_optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("gran_name", ["d", "du", "dui"])
def test_the_lambda_gradient_set_as_computed_equals_its_backward(gran_name: str, lambda_optimizer: str) -> None:
    """lambda_step applies the whole-table Λ-gradient without a backward: three λOpt iterations give
    Λ, Θ and the logged values of the route that attaches the loss to Λ and runs its backward, bit
    for bit (D's one λ tensor serves both sides: its two parts are summed either way)."""

    def run(backward: bool):  # type: ignore[no-untyped-def]
        model, gran, opt = lambda_models.build(ADAMS["adam_amsgrad"], gran_name, prior_steps=2)
        params = list(gran.parameters())
        lam_opt = LambdaAdam(params, lr=0.01, amsgrad=True) if lambda_optimizer == "adam" else LambdaSGD(params, lr=0.5)
        real = steps.lookahead

        def attached(model, theta, granularity, *args, **kwargs):  # type: ignore[no-untyped-def]
            result = real(model, theta, granularity, *args, **kwargs)
            assert isinstance(result, dense.DenseLookahead)
            return result.attach(granularity)

        gen = torch.Generator().manual_seed(11)
        logged = []
        with mock.patch.object(steps, "lookahead", attached) if backward else contextlib.nullcontext():
            for _ in range(3):
                train, valid = lambda_models.random_batch(gen, 6), lambda_models.random_batch(gen, 5)
                train_backward(model, opt, train)
                kwargs = {"scope": "batch", "scale": 1.0, "clip_norm": BIG_CLIP}
                options = {"lambda_clip_norm": 1e-3, "dropout": 0.0, "compiled": False}
                logged += steps.lambda_step(model, opt, lam_opt, gran, train, valid, **options, **kwargs)
                steps.theta_step(model, opt, gran, train, **kwargs)
        return [t.detach().clone() for t in (*logged, *gran.parameters(), *model.parameters())]

    for got, want in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)


@pytest.fixture
def fresh_dynamo():  # type: ignore[no-untyped-def]
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize(("opt_name", "gran_name"), [("adam", "d"), ("adam_amsgrad", "dui"), ("adam_maximize", "di")])
def test_compiled_equals_eager(opt_name: str, gran_name: str) -> None:
    model, gran, opt = build_adam(opt_name, gran_name, 3)
    eager_loss, eager = _grads(model, gran, opt, BIG_CLIP, path="dense")
    compiled_loss, compiled = _grads(model, gran, opt, BIG_CLIP, path="dense", compiled=True)
    assert counters["stats"]["unique_graphs"] >= 1 and not dense.DENSE._failed
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-12, atol=0.0)
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_no_recompilation_from_step_to_step() -> None:
    """Adam's bias corrections and the learning rate change every step; after the first two
    (Adam without, then with state) nothing is compiled again."""
    torch.manual_seed(0)
    n_users, n_items, dim = 40, 30, 6
    model = MatrixFactorization(n_users, n_items, dim, init_std=0.5)
    gran = LambdaGranularity("dui", n_users, n_items, dim, init=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    lam_opt = LambdaSGD(gran.parameters(), lr=10.0)
    graphs = []
    with mock.patch.object(dense, "lookahead", wraps=dense.lookahead) as spy:
        for step in range(6):
            gen = torch.Generator().manual_seed(step)
            train = tuple(torch.randint(0, n, (24,), generator=gen) for n in (n_users, n_items, n_items))
            valid = tuple(torch.randint(0, n, (18,), generator=gen) for n in (n_users, n_items, n_items))
            lambda_opt_iteration(model, gran, opt, lam_opt, train, valid, clip=BIG_CLIP, compiled=True)
            sched.step()
            graphs.append(counters["stats"]["unique_graphs"])
    assert spy.call_count == 6
    assert graphs[1] > 0
    assert graphs[2:] == [graphs[1]] * 4, f"recompiled: unique graphs per step {graphs}"
    assert not dense.DENSE._failed
