"""Λ at a granularity, broadcast to λU (|U|×d) and λI (|I|×d) (docs/method.md, "Regularizer and its
granularities").

Storage per name (``s`` = one tensor shared by users and items; "fixed" = a buffer at ``init``):

=========  =======================  =======================
name       user λ stored as         item λ stored as
=========  =======================  =======================
fix        fixed (1, 1)             same buffer
global     s (1, 1), learned        s
d          s (1, d), learned        s
du         (|U|, d)                 (1, d)
di         (1, d)                   (|I|, d)
dui        (|U|, d)                 (|I|, d)
u          (|U|, 1)                 fixed (1, 1)
i          fixed (1, 1)             (|I|, 1)
ui         (|U|, 1)                 (|I|, 1)
dsep       (1, d), learned          (1, d), learned (separate from the user one)
=========  =======================  =======================

``dsep`` is Rendle's (WSDM 2012, SGDA) granularity: one per-dimension λ vector for all user
factors and another for all item factors (model ``sgda``).

Row-stored tensors (first dim |U| or |I|) are gathered with ``F.embedding(..., sparse=True)``, so a
backward through ``user_lambda(rows)`` yields a sparse COO gradient holding only those rows: a
Λ-step costs O(rows·d), not O(|U|·d). Shared tensors are returned as-is (a (1, k) view, never a
dense |U|×d copy) and get ordinary dense gradients.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

# name -> (user storage, item storage); storage is (kind, width) with kind in
# "fixed" (buffer at init), "shared" (one learned tensor used by both sides), "row" (one row per
# user/item), "vec" (one learned (1, width) tensor for that side only).
_Kind = Literal["fixed", "shared", "row", "vec"]
_LAYOUTS: dict[str, tuple[tuple[_Kind, str], tuple[_Kind, str]]] = {
    "fix": (("fixed", "1"), ("fixed", "1")),
    "global": (("shared", "1"), ("shared", "1")),
    "d": (("shared", "d"), ("shared", "d")),
    "du": (("row", "d"), ("vec", "d")),
    "di": (("vec", "d"), ("row", "d")),
    "dui": (("row", "d"), ("row", "d")),
    "u": (("row", "1"), ("fixed", "1")),
    "i": (("fixed", "1"), ("row", "1")),
    "ui": (("row", "1"), ("row", "1")),
    "dsep": (("vec", "d"), ("vec", "d")),
}
GRANULARITY_NAMES: tuple[str, ...] = tuple(_LAYOUTS)


class LambdaGranularity(nn.Module):
    """Regularization coefficients Λ ≥ 0 stored at granularity ``name`` (see module docstring).

    Attributes (present depending on ``name``): ``lambda_shared`` (Parameter, both sides),
    ``lambda_user`` / ``lambda_item`` (Parameter, one side), ``lambda_fixed`` (buffer, not learned).
    ``name`` is matched case-insensitively ("DUI" == "dui").
    """

    def __init__(self, name: str, n_users: int, n_items: int, dim: int, init: float) -> None:
        super().__init__()
        key = str(name).lower()
        if key not in _LAYOUTS:
            raise ValueError(
                f"unknown Λ granularity {name!r} (config key `granularity.name`); "
                f"valid names: {', '.join(GRANULARITY_NAMES)}"
            )
        if n_users <= 0 or n_items <= 0 or dim <= 0:
            raise ValueError(f"LambdaGranularity needs positive sizes, got {n_users=}, {n_items=}, {dim=}")
        if init < 0:
            raise ValueError(f"Λ must be ≥ 0, got init={init} (config key `granularity.init`)")
        self.name, self.n_users, self.n_items, self.dim, self.init = key, n_users, n_items, dim, float(init)
        (u_kind, u_w), (i_kind, i_w) = _LAYOUTS[key]
        width = {"1": 1, "d": dim}

        def full(rows: int, w: str) -> torch.Tensor:
            return torch.full((rows, width[w]), self.init)

        if "fixed" in (u_kind, i_kind):
            self.register_buffer("lambda_fixed", torch.full((1, 1), self.init))
        if u_kind == "shared":
            self.lambda_shared = nn.Parameter(full(1, u_w))
        if u_kind in ("row", "vec"):
            self.lambda_user = nn.Parameter(full(n_users if u_kind == "row" else 1, u_w))
        if i_kind in ("row", "vec"):
            self.lambda_item = nn.Parameter(full(n_items if i_kind == "row" else 1, i_w))
        self._user_attr = {"fixed": "lambda_fixed", "shared": "lambda_shared"}.get(u_kind, "lambda_user")
        self._item_attr = {"fixed": "lambda_fixed", "shared": "lambda_shared"}.get(i_kind, "lambda_item")
        self._user_rowwise = u_kind == "row"
        self._item_rowwise = i_kind == "row"

    # ------------------------------------------------------------------ properties
    @property
    def learnable(self) -> bool:
        """False only for ``fix`` (λFix): then Λ has no parameters."""
        return self.name != "fix"

    @property
    def user_storage(self) -> torch.Tensor:
        """The tensor λU is read from: (|U|, k) if row-stored, else (1, k); k ∈ {1, d}."""
        return getattr(self, self._user_attr)

    @property
    def item_storage(self) -> torch.Tensor:
        """The tensor λI is read from: (|I|, k) if row-stored, else (1, k); k ∈ {1, d}."""
        return getattr(self, self._item_attr)

    @property
    def user_rowwise(self) -> bool:
        """True iff λU has one stored row per user (its gradient is sparse when gathered)."""
        return self._user_rowwise

    @property
    def item_rowwise(self) -> bool:
        """True iff λI has one stored row per item (its gradient is sparse when gathered)."""
        return self._item_rowwise

    # ------------------------------------------------------------------ lookups
    @staticmethod
    def _lookup(storage: torch.Tensor, rowwise: bool, rows: torch.Tensor | None) -> torch.Tensor:
        if not rowwise or rows is None:
            return storage
        return F.embedding(rows, storage, sparse=True)

    def user_lambda(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """λU for user ``rows`` (LongTensor (n,)): (n, k) if row-stored, else the stored (1, k) tensor
        itself; broadcastable to (n, d). ``rows=None``: all users, broadcastable to (|U|, d).
        Row-stored + rows given ⇒ sparse gradient on exactly those rows."""
        return self._lookup(self.user_storage, self._user_rowwise, rows)

    def item_lambda(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """λI for item ``rows``, as :meth:`user_lambda`."""
        return self._lookup(self.item_storage, self._item_rowwise, rows)

    def forward(
        self, users: torch.Tensor | None = None, items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(λU[users], λI[items]); see :meth:`user_lambda`."""
        return self.user_lambda(users), self.item_lambda(items)

    # ------------------------------------------------------------------ maintenance / export
    @torch.no_grad()
    def project_(self) -> None:
        """Clamp every stored Λ to [0, ∞) in place (the projection after each Λ update)."""
        for t in (*self.parameters(), *self.buffers()):
            t.clamp_(min=0.0)

    @torch.no_grad()
    def dense_user_lambda(self) -> torch.Tensor:
        """λU as a fresh, detached, contiguous (|U|, d) tensor (analysis / checkpoint export)."""
        return self.user_storage.detach().expand(self.n_users, self.dim).clone()

    @torch.no_grad()
    def dense_item_lambda(self) -> torch.Tensor:
        """λI as a fresh, detached, contiguous (|I|, d) tensor (analysis / checkpoint export)."""
        return self.item_storage.detach().expand(self.n_items, self.dim).clone()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, n_users={self.n_users}, n_items={self.n_items}, dim={self.dim}, init={self.init}"
