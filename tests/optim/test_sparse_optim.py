"""Row-sparse Θ optimizers and fused dense ones: the look-ahead replays them exactly (the invariant
of docs/method.md, for every granularity), the Λ-gradient matches finite differences, gradients stay
row-sparse end to end, untouched rows keep value and state, and state round-trips."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lopt.lookahead import steps
from lopt.lookahead.dispatch import lookahead_rows, lookahead_validation_loss
from lopt.models.granularity import GRANULARITY_NAMES, LambdaGranularity
from lopt.models.mf import MatrixFactorization, bpr_loss
from lopt.models.regularizer import add_penalty_grad_, clip_grad_norm_
from lopt.optim.row_sparse import RowSparseAdagrad, RowSparseAdam, RowSparseSGD, is_row_sparse
from tests.helpers import lambda_models
from tests.helpers.lambda_models import (
    NI,
    NU,
    TRAIN,
    VALID,
    D,
    assert_lambda_grad_matches_finite_differences,
    random_batch,
    train_backward,
)

SCALE = 0.3
CLIP = 0.05

SPARSE: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "sparse_adam": lambda ps: RowSparseAdam(ps, lr=0.05),
    "sparse_adam_fused": lambda ps: RowSparseAdam(ps, lr=0.05, fused=True),
    "sparse_adagrad": lambda ps: RowSparseAdagrad(ps, lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1),
    "sparse_sgd": lambda ps: RowSparseSGD(ps, lr=0.1),
}
FUSED: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "adam_fused": lambda ps: torch.optim.Adam(ps, lr=0.05, fused=True),
    "adam_fused_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.05, amsgrad=True, fused=True),
    "adagrad_fused": lambda ps: torch.optim.Adagrad(ps, lr=0.1, lr_decay=0.01, fused=True),
    "sgd_fused": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True),
}
ALL = {**SPARSE, **FUSED}


def real_step(model, gran, opt, batch, scope: str, clip: float | None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return lambda_models.real_step(model, gran, opt, batch, scope, clip, SCALE)


def build(opt_name: str, gran_name: str, scope: str, clip: float | None, prior_steps: int):  # type: ignore[no-untyped-def]
    return lambda_models.build(  # small batches: rows left behind
        ALL[opt_name],
        gran_name,
        sparse_grad=opt_name in SPARSE,
        scope=scope,
        clip=clip,
        scale=SCALE,
        prior_steps=prior_steps,
        batch_size=3,
    )


def _scopes(opt_name: str) -> list[str]:
    return ["batch"] if opt_name in SPARSE else ["batch", "all"]


CASES = [(o, s) for o in ALL for s in _scopes(o)]


@pytest.mark.parametrize("prior_steps", [0, 3], ids=["first", "later"])
@pytest.mark.parametrize("clip", [None, CLIP], ids=["noclip", "clip"])
@pytest.mark.parametrize("gran_name", GRANULARITY_NAMES)
@pytest.mark.parametrize(("opt_name", "scope"), CASES, ids=[f"{o}-{s}" for o, s in CASES])
def test_lookahead_equals_real_step(
    opt_name: str, scope: str, gran_name: str, clip: float | None, prior_steps: int
) -> None:
    model, gran, opt = build(opt_name, gran_name, scope, clip, prior_steps)
    P, Q = model.user_factors, model.item_factors
    train_backward(model, opt)
    assert P.grad.is_sparse == (opt_name in SPARSE)
    user_rows = torch.unique(VALID[0])
    item_rows = torch.unique(torch.cat([VALID[1], VALID[2]]))
    with torch.no_grad():
        la_p, la_q = lookahead_rows(
            model, opt, gran, TRAIN, user_rows, item_rows, scope=scope, scale=SCALE, clip_norm=clip
        )
        la_loss = lookahead_validation_loss(model, opt, gran, TRAIN, VALID, scope=scope, scale=SCALE, clip_norm=clip)
    norm = steps.theta_step(model, opt, gran, TRAIN, scope=scope, scale=SCALE, clip_norm=clip)
    if clip is not None:
        assert norm > 2 * clip
    torch.testing.assert_close(la_p, P.detach()[user_rows], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(la_q, Q.detach()[item_rows], rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        real_loss = bpr_loss(*model(*VALID))
    torch.testing.assert_close(la_loss, real_loss, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("clip", [None, CLIP], ids=["noclip", "clip"])
@pytest.mark.parametrize("opt_name", ["sparse_adam", "sparse_adagrad", "adam_fused"])
@pytest.mark.parametrize("gran_name", [n for n in GRANULARITY_NAMES if n != "fix"])
def test_lambda_gradient_matches_finite_differences(gran_name: str, opt_name: str, clip: float | None) -> None:
    model, gran, opt = build(opt_name, gran_name, "batch", clip, prior_steps=3)
    train_backward(model, opt)

    def loss() -> torch.Tensor:
        return lookahead_validation_loss(model, opt, gran, TRAIN, VALID, scope="batch", scale=SCALE, clip_norm=clip)

    assert_lambda_grad_matches_finite_differences(gran, loss)


def test_gradient_is_row_sparse_end_to_end() -> None:
    """Forward, penalty and clip keep the Θ gradient a sparse tensor on the batch's unique rows."""
    model, gran, opt = build("sparse_adam", "dui", "batch", None, prior_steps=0)
    opt.zero_grad()
    bpr_loss(*model(*TRAIN)).backward()
    add_penalty_grad_(model, gran, TRAIN, "batch", SCALE)
    clip_grad_norm_(model, CLIP)
    for param, rows in ((model.user_factors, TRAIN[0]), (model.item_factors, torch.cat([TRAIN[1], TRAIN[2]]))):
        assert param.grad.is_sparse and param.grad.is_coalesced()
        assert param.grad.indices()[0].tolist() == torch.unique(rows).tolist()
    # the same values as the dense gradient of the same step
    dense, gran_d, _ = build("adam_fused", "dui", "batch", None, prior_steps=0)
    bpr_loss(*dense(*TRAIN)).backward()
    add_penalty_grad_(dense, gran_d, TRAIN, "batch", SCALE)
    clip_grad_norm_(dense, CLIP)
    torch.testing.assert_close(model.user_factors.grad.to_dense(), dense.user_factors.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model.item_factors.grad.to_dense(), dense.item_factors.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opt_name", list(SPARSE))
def test_untouched_rows_keep_value_and_state(opt_name: str) -> None:
    model, gran, opt = build(opt_name, "dui", "batch", None, prior_steps=2)
    P = model.user_factors
    before = P.detach().clone()
    state = {k: v.clone() for k, v in opt.state[P].items()}
    real_step(model, gran, opt, TRAIN, "batch", None)
    untouched = torch.tensor([r for r in range(NU) if r not in set(TRAIN[0].tolist())])
    touched = torch.unique(TRAIN[0])
    assert torch.equal(P.detach()[untouched], before[untouched])
    assert not torch.equal(P.detach()[touched], before[touched])
    for k, v in opt.state[P].items():
        assert torch.equal(v[untouched], state[k][untouched])
    if "step" in state:
        assert torch.equal(opt.state[P]["step"][touched], state["step"][touched] + 1)


def test_sparse_adam_equals_adam_when_every_row_is_touched() -> None:
    """Lazy Adam differs from Adam only through untouched rows: with dense gradients (every row
    touched every step) the per-row step counts equal the global one and the two coincide."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a, opt_b = RowSparseAdam([a], lr=0.05), torch.optim.Adam([b], lr=0.05)
    for _ in range(4):
        g = torch.randn(5, 3, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_sparse_adam_is_lazy_unlike_adam() -> None:
    """A row touched once and then left alone stops under lazy Adam but keeps moving under Adam."""
    model_s, gran, opt_s = build("sparse_adam", "fix", "batch", None, prior_steps=0)
    real_step(model_s, gran, opt_s, TRAIN, "batch", None)
    after_first = model_s.user_factors.detach()[0].clone()
    other = (torch.tensor([4]), torch.tensor([8]), torch.tensor([3]))
    real_step(model_s, gran, opt_s, other, "batch", None)
    assert torch.equal(model_s.user_factors.detach()[0], after_first)
    torch.manual_seed(0)
    model_d = MatrixFactorization(NU, NI, D, init_std=0.7).double()
    opt_d = torch.optim.Adam(model_d.parameters(), lr=0.05)
    real_step(model_d, gran, opt_d, TRAIN, "batch", None)
    moved = model_d.user_factors.detach()[0].clone()
    real_step(model_d, gran, opt_d, other, "batch", None)
    assert not torch.equal(model_d.user_factors.detach()[0], moved)


def test_sparse_adagrad_without_decay_equals_adagrad() -> None:
    torch.manual_seed(0)
    model_s = MatrixFactorization(NU, NI, D, init_std=0.7, sparse_grad=True).double()
    model_d = MatrixFactorization(NU, NI, D, init_std=0.7).double()
    model_d.load_state_dict(model_s.state_dict())
    gran = LambdaGranularity("fix", NU, NI, D, init=0.1).double()
    opt_s = RowSparseAdagrad(model_s.parameters(), lr=0.1, initial_accumulator_value=0.1)
    opt_d = torch.optim.Adagrad(model_d.parameters(), lr=0.1, initial_accumulator_value=0.1)
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        batch = random_batch(gen, n=3)
        real_step(model_s, gran, opt_s, batch, "batch", None)
        real_step(model_d, gran, opt_d, batch, "batch", None)
    torch.testing.assert_close(model_s.user_factors, model_d.user_factors, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model_s.item_factors, model_d.item_factors, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opt_name", list(SPARSE))
def test_state_dict_round_trips(opt_name: str) -> None:
    model, gran, opt = build(opt_name, "dui", "batch", None, prior_steps=3)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = opt.state_dict()
    torch.save(saved_opt, buf := __import__("io").BytesIO())
    buf.seek(0)
    fresh = MatrixFactorization(NU, NI, D, init_std=0.7, sparse_grad=True).double()
    fresh.load_state_dict(saved_model)
    fresh_opt = SPARSE[opt_name](list(fresh.parameters()))
    fresh_opt.load_state_dict(torch.load(buf))
    if opt_name != "sparse_sgd":
        assert fresh_opt.state[fresh.user_factors]["step"].dtype == torch.int64
    real_step(model, gran, opt, TRAIN, "batch", None)
    real_step(fresh, gran, fresh_opt, TRAIN, "batch", None)
    assert torch.equal(model.user_factors, fresh.user_factors)
    assert torch.equal(model.item_factors, fresh.item_factors)


def test_scope_all_is_refused_with_the_config_key() -> None:
    model, gran, opt = build("sparse_adam", "dui", "batch", None, prior_steps=0)
    bpr_loss(*model(*TRAIN)).backward()
    with pytest.raises(ValueError, match="penalty_scope=batch"):
        add_penalty_grad_(model, gran, TRAIN, "all", SCALE)


def test_is_row_sparse_reads_hydra_partials() -> None:
    import functools

    assert is_row_sparse(functools.partial(RowSparseAdam, lr=1e-3))
    assert is_row_sparse(RowSparseAdagrad)
    assert not is_row_sparse(functools.partial(torch.optim.Adam, lr=1e-3))


def test_fused_sparse_adam_equals_the_reference_update() -> None:
    """The compiled lazy-Adam row kernel computes the reference update (float rounding only), with
    rows whose step counts differ and rows left untouched."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(7, 4, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a, opt_b = RowSparseAdam([a], lr=0.05), RowSparseAdam([b], lr=0.05, fused=True)
    for rows in ([0, 2, 5], [2, 3], [0, 2, 6], [1]):
        idx = torch.tensor([rows])
        g = torch.randn(len(rows), 4, dtype=torch.float64)
        a.grad = torch.sparse_coo_tensor(idx, g, a.shape)
        b.grad = torch.sparse_coo_tensor(idx, g.clone(), b.shape)
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-15)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opt_b.state[b][key], opt_a.state[a][key], rtol=1e-13, atol=1e-15)
    assert torch.equal(opt_b.state[b]["step"], opt_a.state[a]["step"])
    assert opt_b.state[b]["step"].tolist() == [2, 1, 3, 1, 0, 1, 1]
    assert torch.equal(a.detach()[4], b.detach()[4])
    from lopt.optim.row_sparse import LAZY_ADAM

    assert not LAZY_ADAM._failed, "the lazy-Adam kernel did not compile"


def test_fused_sparse_adam_falls_back_to_eager_when_compiling_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing torch.compile is logged once, naming the switch, and the eager kernel runs."""
    from lopt.optim import lazy_adam, row_sparse
    from lopt.optim.compiled import Kernel

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    monkeypatch.setattr(
        row_sparse, "LAZY_ADAM", Kernel(lazy_adam._lazy_adam_rows_, "sparse_adam", "optimizer.fused=false")
    )
    a = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    opt_a, opt_b = RowSparseAdam([a], lr=0.1), RowSparseAdam([b], lr=0.1, fused=True)
    for _ in range(2):
        a.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.ones(1, 2, dtype=torch.float64), a.shape)
        b.grad = a.grad.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-15)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile of the sparse_adam kernel" in r.getMessage()]
    assert len(warnings) == 1 and "optimizer.fused=false" in warnings[0]
