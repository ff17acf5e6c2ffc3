"""NeuMF's LightningModule: the network of :mod:`lopt.models.neumf` trained in the project's ranking framework.

Training (manual optimization, like the MF modules): one batch of the shared BPR triples
(u, i, j); ``loss: bpr`` — BPR on (ŷ_ui, ŷ_uj) — or ``loss: bce`` — NCF's pointwise log loss
with (u, i) labelled 1 and the sampled (u, j) labelled 0 (one negative per positive, the shared
sampler; NCF used 4). Regularization: ``lambda_value`` · the batch-scope squared norm of the
embedding rows the batch uses (both towers, once per occurrence, / |B|, the form of MF-λFix's
batch penalty); dense layers are not penalized (NCF's default ``reg_layers`` = 0). The Θ
optimizer's own ``weight_decay`` is an alternative that decays every parameter densely.
No GMF/MLP pre-training (NCF's optional step): both towers are trained jointly from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from lopt.models.mf import bpr_loss
from lopt.models.neumf import LOSSES, NeuMF
from lopt.modules.manual import ManualThetaModule
from lopt.optim.row_sparse import is_row_sparse
from lopt.types import Triples


class NeuMFModule(ManualThetaModule):
    """NeuMF trained on the shared BPR triples (``name: neumf``); see the module docstring.

    ``optimizer`` builds the Θ optimizer from all parameters (a Hydra partial).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        mlp_layers: Sequence[int],
        init_std: float,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: str = "bpr",
        lambda_value: float = 0.0,
        grad_clip_norm: float | None = None,
        score_block_elements: int = 1 << 19,
        name: str = "neumf",
    ) -> None:
        super().__init__(optimizer, grad_clip_norm)
        if loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        if not lambda_value >= 0:
            raise ValueError(f"model.lambda_value must be ≥ 0, got {lambda_value}")
        if score_block_elements <= 0:
            raise ValueError(f"model.score_block_elements must be positive, got {score_block_elements}")
        if is_row_sparse(optimizer):
            raise ValueError(
                "model=neumf does not support a row-sparse Θ optimizer (optimizer=sparse_adam|sparse_adagrad|"
                "sparse_sgd): its MLP layers and embeddings are trained with dense gradients; use optimizer=adam"
            )
        self.model = NeuMF(n_users, n_items, dim, list(mlp_layers), init_std)
        self.loss_name = loss
        self.lambda_value = float(lambda_value)
        self.score_block_elements = int(score_block_elements)
        self.save_hyperparameters(
            {
                "n_users": n_users,
                "n_items": n_items,
                "dim": dim,
                "mlp_layers": list(mlp_layers),
                "init_std": init_std,
                "loss": loss,
                "lambda_value": self.lambda_value,
                "grad_clip_norm": grad_clip_norm,
                "name": name,
            }
        )

    # ----------------------------------------------------------------------------- model
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.score_users(users, self.score_block_elements)

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The configured data loss of a triple batch (a scalar, mean over the batch)."""
        pos_logits = self.model(users, pos)
        neg_logits = self.model(users, neg)
        if self.loss_name == "bpr":
            return bpr_loss(pos_logits, neg_logits)
        logits = torch.cat([pos_logits, neg_logits])
        labels = torch.cat([torch.ones_like(pos_logits), torch.zeros_like(neg_logits)])
        return F.binary_cross_entropy_with_logits(logits, labels)

    def penalty(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """λ/|B| · Σ_batch (‖p_u‖² + ‖q_i‖² + ‖q_j‖²) over both towers' embeddings (a scalar)."""
        (ug, um), (ig, im) = self.model.embedding_tables()
        total = ug[users].square().sum() + um[users].square().sum()
        for items in (pos, neg):
            total = total + ig[items].square().sum() + im[items].square().sum()
        return self.lambda_value * total / max(1, users.numel())

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Triples], batch_idx: int) -> torch.Tensor:
        users, pos, neg = batch["train"]
        opt = self.optimizers()
        opt.zero_grad(set_to_none=False)
        loss = self.batch_loss(users, pos, neg)
        reg = self.penalty(users, pos, neg) if self.lambda_value > 0 else loss.new_zeros(())
        total = loss + reg
        self._check_finite(total)
        self.manual_backward(total)
        max_norm = math.inf if self.grad_clip_norm is None else float(self.grad_clip_norm)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        opt.step()
        if self._is_logging_step():
            self.log_dict(
                {
                    f"train/{self.loss_name}_loss": loss.detach(),
                    "train/penalty": reg.detach(),
                    "train/grad_norm": grad_norm,
                    "train/lr": torch.tensor(opt.param_groups[0]["lr"]),
                },
                on_step=True,
                on_epoch=False,
            )
        return total.detach()


__all__ = ["LOSSES", "NeuMF", "NeuMFModule"]
