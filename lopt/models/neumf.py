"""NeuMF (He et al., WWW 2017, "Neural Collaborative Filtering") in the project's ranking framework.

Two towers with their own embeddings, fused by one linear layer (NCF eq. 11–12):

* GMF: φ_GMF = p^G_u ⊙ q^G_i                                  (``dim`` each)
* MLP: φ_MLP = a_L(W_L … a_1(W_1 [p^M_u ; q^M_i] + b_1) … + b_L) with ReLU a_l; ``mlp_layers``
  = [w_0, w_1, …, w_L] follows NCF's convention: w_0 = 2 × the MLP embedding size (the width of
  the concatenated input), w_1 … w_L the hidden layers' widths.
* ŷ(u, i) = h · [φ_GMF ; φ_MLP] + b (a logit; the BPR and log losses both take logits).

The network only; its training is :class:`lopt.modules.neumf.NeuMFModule`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

LOSSES = ("bpr", "bce")


class NeuMF(nn.Module):
    """The NeuMF network: ``forward(users, items) -> (n,)`` logits for index pairs; ``score_users``
    scores a user block against all items without a per-user or per-item loop."""

    def __init__(self, n_users: int, n_items: int, dim: int, mlp_layers: Sequence[int], init_std: float) -> None:
        super().__init__()
        layers = [int(w) for w in mlp_layers]
        if n_users <= 0 or n_items <= 0 or dim <= 0:
            raise ValueError(f"NeuMF needs positive sizes, got {n_users=}, {n_items=}, {dim=} (config key model.dim)")
        if len(layers) < 2 or any(w <= 0 for w in layers) or layers[0] % 2:
            raise ValueError(
                f"model.mlp_layers must be [input width (even: 2 × MLP embedding size), hidden widths…] "
                f"with at least one hidden layer and positive widths, got {list(mlp_layers)}"
            )
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        mlp_dim = layers[0] // 2
        self.user_gmf = nn.Parameter(torch.randn(n_users, dim) * init_std)
        self.item_gmf = nn.Parameter(torch.randn(n_items, dim) * init_std)
        self.user_mlp = nn.Parameter(torch.randn(n_users, mlp_dim) * init_std)
        self.item_mlp = nn.Parameter(torch.randn(n_items, mlp_dim) * init_std)
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:]))
        self.predict = nn.Linear(dim + layers[-1], 1)
        for layer in (*self.mlp, self.predict):  # NCF: Glorot-uniform weights, zero biases
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def embedding_tables(self) -> tuple[tuple[nn.Parameter, nn.Parameter], tuple[nn.Parameter, nn.Parameter]]:
        """((user GMF, user MLP), (item GMF, item MLP)) embedding tables."""
        return (self.user_gmf, self.user_mlp), (self.item_gmf, self.item_mlp)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits ŷ(users[n], items[n]) for equal-length index tensors: (n,). The literal NCF form
        (concatenated MLP input), used for training."""
        gmf = self.user_gmf[users] * self.item_gmf[items]
        h = torch.cat([self.user_mlp[users], self.item_mlp[items]], dim=-1)
        for layer in self.mlp:
            h = F.relu(layer(h))
        return self.predict(torch.cat([gmf, h], dim=-1)).squeeze(-1)

    @torch.no_grad()
    def score_users(self, users: torch.Tensor, max_block_elements: int = 1 << 19) -> torch.Tensor:
        """(B, n_items) logits of every item for a block of users, equal to ``forward`` on all pairs.

        GMF: (p ⊙ h_G) @ Q_Gᵀ. MLP: the first layer splits as W_1 [p; q] = W_1ᵘ p + W_1ⁱ q, so each
        side is projected once and the (B, chunk, w_1) sums go through the remaining layers as
        batched matmuls; items are processed in chunks so that B × chunk × max(w) ≤
        ``max_block_elements``. Chunking changes no arithmetic (each score is its own sum); chunks
        of a few MB keep the hidden activations in cache, which is ~3× faster than one large chunk.
        """
        n_gmf = self.dim
        h_gmf, h_mlp = self.predict.weight[0, :n_gmf], self.predict.weight[0, n_gmf:]
        gmf = (self.user_gmf[users] * h_gmf) @ self.item_gmf.T + self.predict.bias  # (B, n_items)
        first = self.mlp[0]
        mlp_dim = self.user_mlp.shape[1]
        w_user, w_item = first.weight[:, :mlp_dim], first.weight[:, mlp_dim:]
        user_part = self.user_mlp[users] @ w_user.T + first.bias  # (B, w_1)
        item_part = self.item_mlp @ w_item.T  # (n_items, w_1)
        widest = max(layer.out_features for layer in self.mlp)
        chunk = max(1, max_block_elements // max(1, len(users) * widest))
        for start in range(0, self.n_items, chunk):
            stop = min(start + chunk, self.n_items)
            h = torch.add(user_part.unsqueeze(1), item_part[start:stop].unsqueeze(0)).relu_()  # (B, c, w_1)
            for layer in self.mlp[1:]:
                h = layer(h).relu_()
            gmf[:, start:stop] += h @ h_mlp
        return gmf
