"""A tiny MF model with a Λ and a Θ optimizer whose state real steps have built, the fixed train and
validation batches the look-ahead tests share, and the real λOpt steps
(:mod:`lopt.lookahead.steps`) driving them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lopt.lookahead import steps
from lopt.models.granularity import LambdaGranularity
from lopt.models.mf import MatrixFactorization
from lopt.types import Triples

NU, NI, D = 7, 9, 4
# repeated users/items; user 6 and item 8 absent from the train batch; users 4, 5 only in valid
TRAIN: Triples = (
    torch.tensor([0, 1, 1, 2, 3, 0]),
    torch.tensor([1, 2, 2, 3, 4, 5]),
    torch.tensor([5, 6, 7, 5, 0, 2]),
)
VALID: Triples = (torch.tensor([1, 4, 5, 0, 1]), torch.tensor([2, 8, 3, 1, 2]), torch.tensor([0, 1, 6, 6, 8]))

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def random_batch(gen: torch.Generator, n: int = 6) -> Triples:
    """n random (user, positive, negative) triples over the tiny model's ids."""
    return (
        torch.randint(0, NU, (n,), generator=gen),
        torch.randint(0, NI, (n,), generator=gen),
        torch.randint(0, NI, (n,), generator=gen),
    )


def model_and_lambda(
    gran_name: str,
    dtype: torch.dtype = torch.float64,
    *,
    sparse_grad: bool = False,
    init: float = 0.8,
    lam_offset: float | None = 0.2,
) -> tuple[MatrixFactorization, LambdaGranularity]:
    """A (NU, NI, D) model (init_std 0.7, seed 0) and its Λ ``gran_name``, with distinct positive
    entries (uniform + ``lam_offset``; None keeps the constant ``init``)."""
    torch.manual_seed(0)
    model = MatrixFactorization(NU, NI, D, init_std=0.7, sparse_grad=sparse_grad).to(dtype)
    gran = LambdaGranularity(gran_name, NU, NI, D, init=init).to(dtype)
    if lam_offset is not None:
        with torch.no_grad():
            for p in gran.parameters():
                p.copy_(torch.rand_like(p) + lam_offset)
    return model, gran


def real_step(
    model: MatrixFactorization,
    gran: LambdaGranularity,
    opt: torch.optim.Optimizer,
    batch: Triples,
    scope: str,
    clip: float | None,
    scale: float,
) -> torch.Tensor:
    """The real Θ-step of docs/method.md: BPR backward (:func:`steps.train_loss`), then
    :func:`steps.theta_step` (+ ∇_ΘΩ, clip, ``opt.step()``). Returns the norm before clipping."""
    opt.zero_grad()
    steps.train_loss(model, batch).backward()
    return steps.theta_step(model, opt, gran, batch, scope=scope, scale=scale, clip_norm=clip)


def build(
    make_optimizer: OptimizerFactory,
    gran_name: str,
    *,
    dtype: torch.dtype = torch.float64,
    sparse_grad: bool = False,
    scope: str = "batch",
    clip: float | None = None,
    scale: float = 1.0,
    prior_steps: int = 0,
    batch_size: int = 6,
    scheduler: bool = False,
) -> tuple[MatrixFactorization, LambdaGranularity, torch.optim.Optimizer]:
    """:func:`model_and_lambda` and a Θ optimizer whose state ``prior_steps`` real Θ-steps on random
    batches built (its lr halved after each by a scheduler, if ``scheduler``)."""
    model, gran = model_and_lambda(gran_name, dtype, sparse_grad=sparse_grad)
    opt = make_optimizer(list(model.parameters()))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    gen = torch.Generator().manual_seed(1)
    for _ in range(prior_steps):
        real_step(model, gran, opt, random_batch(gen, batch_size), scope, clip, scale)
        if sched is not None:
            sched.step()
    return model, gran, opt


def train_backward(model: MatrixFactorization, opt: torch.optim.Optimizer, batch: Triples = TRAIN) -> None:
    """g_t of ``batch`` into the factors' ``.grad`` (what the Λ-step reads)."""
    opt.zero_grad()
    steps.train_loss(model, batch).backward()


def lambda_opt_iteration(
    model: MatrixFactorization,
    gran: LambdaGranularity,
    theta_opt: torch.optim.Optimizer,
    lam_opt: torch.optim.Optimizer,
    train: Triples,
    valid: Triples,
    *,
    scope: str = "batch",
    scale: float = 1.0,
    clip: float | None = None,
    lambda_clip: float | None = None,
    compiled: bool = False,
) -> None:
    """One λOpt iteration (docs/method.md, "Training") by the real steps: g_t, the Λ-step, the Θ-step."""
    train_backward(model, theta_opt, train)
    kwargs = {"scope": scope, "scale": scale, "clip_norm": clip}
    steps.lambda_step(
        model,
        theta_opt,
        lam_opt,
        gran,
        train,
        valid,
        lambda_clip_norm=lambda_clip,
        dropout=0.0,
        compiled=compiled,
        **kwargs,
    )
    steps.theta_step(model, theta_opt, gran, train, **kwargs)


def assert_lambda_grad_matches_finite_differences(gran: LambdaGranularity, loss: Callable[[], torch.Tensor]) -> None:
    """Backpropagate ``loss`` into Λ and compare each parameter's gradient with central finite
    differences (h = 1e-5) at rows in train and valid (0, 1), train only (2), valid only (4) and
    absent (6 / 8), first and last column; at least one difference must be non-zero."""
    gran.zero_grad(set_to_none=True)
    loss().backward()
    h, checked_nonzero = 1e-5, 0
    for p in gran.parameters():
        assert p.grad is not None
        analytic = p.grad.to_dense()
        for r in [r for r in (0, 1, 2, 4, 6, 8) if r < p.shape[0]]:
            for k in sorted({0, p.shape[1] - 1}):
                with torch.no_grad():
                    orig = p[r, k].item()
                    p[r, k] = orig + h
                    up = loss().item()
                    p[r, k] = orig - h
                    down = loss().item()
                    p[r, k] = orig
                fd = (up - down) / (2 * h)
                assert analytic[r, k].item() == pytest.approx(fd, rel=1e-5, abs=2e-9), (p.shape, r, k, fd)
                checked_nonzero += abs(fd) > 1e-8
    assert checked_nonzero > 0, "the Λ-gradient must not be trivially zero"
