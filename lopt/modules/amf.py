"""AMF: MF-BPR trained with Adversarial Personalized Ranking (He et al., SIGIR 2018, "APR").

One iteration (after ``pretrain_epochs`` of plain MF-BPR):
  1. forward/backward of BPR(Θ) on the training batch → g = ∇_Θ BPR in ``.grad``;
  2. the adversarial perturbation of the batch's factor rows, Δ = ε · g_r / ‖g_r‖ per row r
     (Δ_P on the batch's users, Δ_Q on its positive and negative items; zero elsewhere) —
     per-row normalization as APR's released code (``tf.nn.l2_normalize(grad, 1)``); Δ is a
     constant (no gradient flows through it), as APR's assigned ``delta`` variables;
  3. forward/backward of α · BPR(Θ + Δ) on the same batch, accumulated into ``.grad``;
  4. the λ‖Θ‖² penalty (λFix's ``fix`` granularity, so ``penalty_scope`` batch/all behaves
     exactly as in MF-λFix), the Θ gradient-norm clip, and the Θ-step.

So the Θ-step follows ∇[BPR(Θ) + α·BPR(Θ+Δ) + Ω(Θ; λ)] at Δ fixed. ε = 0 switches the adversary
off (plain MF-BPR): a literal Δ = 0 would train (1+α)·BPR instead, a rescaled MF-BPR. α = 0 runs
the adversarial pass but adds an exact zero, so it too is MF-BPR bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lopt.models.mf import bpr_loss, triple_scores
from lopt.models.rows import BatchRows
from lopt.modules.fix import FixModule
from lopt.optim.row_sparse import is_row_sparse
from lopt.types import Triples


def adversarial_rows(grad: torch.Tensor, rows: torch.Tensor, eps: float) -> torch.Tensor:
    """Δ[rows] = eps · grad[rows] / ‖grad[rows]‖₂ (row-wise): (len(rows), d).

    Guarantee: each returned row has L2 norm ``eps`` exactly up to float rounding, unless that row
    of ``grad`` is all zero, in which case it is zero (as ``tf.nn.l2_normalize``, norm floored at
    1e-12). ``grad`` is detached; the result carries no autograd graph.
    """
    g = grad.detach()[rows]
    norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
    return g * (eps / norm.clamp_min(1e-12))


class AMFModule(FixModule):
    """MF-BPR + APR adversarial training (``name: amf``); see the module docstring.

    ``adv_eps`` (ε ≥ 0): the perturbation's per-row L2 norm; ``adv_alpha`` (α ≥ 0): the weight of
    the adversarial BPR term; ``pretrain_epochs``: epochs of plain MF-BPR before the adversary
    starts (APR's recipe: start from a trained MF-BPR). The remaining arguments (``kwargs``:
    penalty_scope, penalty_scale, grad_clip_norm) are MF-λFix's; ``lambda_value`` is the λ of λ‖Θ‖².
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        init_std: float,
        optimizer: Callable[..., torch.optim.Optimizer],
        lambda_value: float,
        adv_eps: float,
        adv_alpha: float,
        pretrain_epochs: int = 0,
        name: str = "amf",
        **kwargs: Any,
    ) -> None:
        if not adv_eps >= 0:
            raise ValueError(f"model.adv_eps (ε, the perturbation norm) must be ≥ 0, got {adv_eps}")
        if not adv_alpha >= 0:
            raise ValueError(f"model.adv_alpha (α, the adversarial loss weight) must be ≥ 0, got {adv_alpha}")
        if pretrain_epochs < 0:
            raise ValueError(f"model.pretrain_epochs must be ≥ 0, got {pretrain_epochs}")
        if is_row_sparse(optimizer):
            raise ValueError(
                "model=amf does not support a row-sparse Θ optimizer (optimizer=sparse_adam|sparse_adagrad|"
                "sparse_sgd): its adversarial perturbation reads the dense BPR gradient; use optimizer=adam"
            )
        super().__init__(n_users, n_items, dim, init_std, optimizer, lambda_value, name=name, **kwargs)
        self.adv_eps = float(adv_eps)
        self.adv_alpha = float(adv_alpha)
        self.pretrain_epochs = int(pretrain_epochs)
        self.hparams.update(adv_eps=self.adv_eps, adv_alpha=self.adv_alpha, pretrain_epochs=self.pretrain_epochs)

    def adversarial_active(self) -> bool:
        """True once pre-training is over, unless ε = 0 (adversary off)."""
        return self.adv_eps > 0 and self.current_epoch >= self.pretrain_epochs

    def perturbations(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Δ_P[users], Δ_Q[items]) of shapes (len(users), d), (len(items), d) from the BPR gradient
        currently in ``user_factors.grad`` / ``item_factors.grad`` (per-row normalized, norm ε)."""
        P, Q = self.model.user_factors, self.model.item_factors
        if P.grad is None or Q.grad is None:
            raise RuntimeError("AMF perturbations need the BPR gradient in .grad (run the BPR backward first)")
        return adversarial_rows(P.grad, users, self.adv_eps), adversarial_rows(Q.grad, items, self.adv_eps)

    def before_theta_step(self, batch: dict[str, Triples], rows: BatchRows) -> dict[str, torch.Tensor]:
        """MFBPRModule's slot between the BPR backward (g in ``.grad``) and the Θ-step; here it adds
        α·∇_Θ BPR(Θ + Δ) to ``.grad`` (Δ from g, constant). λ is fixed: there is no Λ-step."""
        if not self.adversarial_active():
            return {}
        users, pos, neg = batch["train"]
        user_rows, user_idx = torch.unique(users, return_inverse=True)
        item_rows, item_idx = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        delta_p, delta_q = self.perturbations(user_rows, item_rows)
        # Θ + Δ on the batch's rows only; the gather keeps the graph to P and Q.
        p_adv = self.model.user_factors[user_rows] + delta_p
        q_adv = self.model.item_factors[item_rows] + delta_q
        n = users.numel()
        adv_loss = bpr_loss(*triple_scores(p_adv, q_adv, user_idx, item_idx[:n], item_idx[n:]))
        self._check_finite(adv_loss)
        self.manual_backward(self.adv_alpha * adv_loss)
        return {"train/adv_bpr_loss": adv_loss.detach()}


__all__ = ["AMFModule", "adversarial_rows"]
