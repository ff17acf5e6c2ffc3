"""LambdaGranularity: storage per name, broadcasting without dense copies, sparse row gradients."""

from __future__ import annotations

import pytest
import torch

from lopt.models.granularity import GRANULARITY_NAMES, LambdaGranularity
from tests.helpers.lambda_models import NI, NU, D

# name -> (user storage shape, item storage shape, user rowwise, item rowwise, n learned tensors)
EXPECTED = {
    "fix": ((1, 1), (1, 1), False, False, 0),
    "global": ((1, 1), (1, 1), False, False, 1),
    "d": ((1, D), (1, D), False, False, 1),
    "du": ((NU, D), (1, D), True, False, 2),
    "di": ((1, D), (NI, D), False, True, 2),
    "dui": ((NU, D), (NI, D), True, True, 2),
    "u": ((NU, 1), (1, 1), True, False, 1),
    "i": ((1, 1), (NI, 1), False, True, 1),
    "ui": ((NU, 1), (NI, 1), True, True, 2),
    "dsep": ((1, D), (1, D), False, False, 2),
}


def test_names_cover_method_table() -> None:
    assert set(GRANULARITY_NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_storage_shapes_and_learnability(name: str) -> None:
    us, is_, urow, irow, n_params = EXPECTED[name]
    g = LambdaGranularity(name, NU, NI, D, init=0.25)
    assert tuple(g.user_storage.shape) == us and tuple(g.item_storage.shape) == is_
    assert (g.user_rowwise, g.item_rowwise) == (urow, irow)
    assert len(list(g.parameters())) == n_params
    assert g.learnable == (name != "fix")
    assert torch.all(g.dense_user_lambda() == 0.25) and torch.all(g.dense_item_lambda() == 0.25)
    assert g.dense_user_lambda().shape == (NU, D) and g.dense_item_lambda().shape == (NI, D)
    # fixed sides are buffers (not learned) at init
    if name in ("fix", "u", "i"):
        assert "lambda_fixed" in dict(g.named_buffers())
    if name in ("global", "d"):
        assert g.user_storage is g.item_storage  # one tensor shared by users and items


def test_case_insensitive_name() -> None:
    assert LambdaGranularity("DUI", NU, NI, D, 0.0).name == "dui"


def test_unknown_name_error_lists_names_and_config_key() -> None:
    with pytest.raises(ValueError) as err:
        LambdaGranularity("dxu", NU, NI, D, 0.0)
    msg = str(err.value)
    assert "granularity.name" in msg and "dxu" in msg
    for name in EXPECTED:
        assert name in msg


def test_negative_init_rejected() -> None:
    with pytest.raises(ValueError, match="granularity.init"):
        LambdaGranularity("d", NU, NI, D, -1.0)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_lookup_broadcasts_without_dense_copies(name: str) -> None:
    g = LambdaGranularity(name, NU, NI, D, init=0.5)
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(torch.rand_like(p) + 0.1)
    rows_u = torch.tensor([0, 3, 3, 6])
    rows_i = torch.tensor([8, 1, 1])
    for lam, storage, rowwise, rows, n in (
        (g.user_lambda, g.user_storage, g.user_rowwise, rows_u, NU),
        (g.item_lambda, g.item_storage, g.item_rowwise, rows_i, NI),
    ):
        out = lam(rows)
        full = lam(None)
        dense = storage.detach().expand(n, D)
        assert torch.equal(torch.broadcast_to(out, (len(rows), D)), dense[rows])
        assert torch.equal(torch.broadcast_to(full, (n, D)), dense)
        if rowwise:
            assert out.shape == (len(rows), storage.shape[1])
        else:
            # shared storage: the stored tensor itself, no copy of size |U|×d or rows×d
            assert out.numel() <= D and out.data_ptr() == storage.data_ptr() and out.shape[0] == 1
        assert full.data_ptr() == storage.data_ptr() and full.numel() == storage.numel()


@pytest.mark.parametrize("name", ["du", "di", "dui", "u", "i", "ui"])
def test_row_stored_lambda_gets_sparse_row_gradient(name: str) -> None:
    g = LambdaGranularity(name, NU, NI, D, init=0.5)
    rows_u, rows_i = torch.tensor([2, 5, 2]), torch.tensor([0, 7])
    (g.user_lambda(rows_u).sum() * 2 + g.item_lambda(rows_i).sum()).backward()
    for storage, rowwise, rows in ((g.user_storage, g.user_rowwise, rows_u), (g.item_storage, g.item_rowwise, rows_i)):
        if not isinstance(storage, torch.nn.Parameter):
            continue
        if rowwise:
            assert storage.grad.is_sparse
            grad = storage.grad.coalesce()
            assert set(grad.indices()[0].tolist()) == set(rows.tolist())
            dense = grad.to_dense()
            expected = torch.zeros_like(storage)
            expected.index_add_(0, rows, torch.ones(len(rows), storage.shape[1]))
            scale = 2.0 if storage is g.user_storage else 1.0
            assert torch.equal(dense, expected * scale)
        else:
            assert not storage.grad.is_sparse


def test_shared_lambda_gets_dense_gradient() -> None:
    g = LambdaGranularity("d", NU, NI, D, init=0.5)
    (g.user_lambda(torch.tensor([1, 2])).sum() + g.item_lambda(torch.tensor([3])).sum()).backward()
    assert not g.lambda_shared.grad.is_sparse
    assert torch.equal(g.lambda_shared.grad, torch.full((1, D), 2.0))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_project_clamps_everything(name: str) -> None:
    g = LambdaGranularity(name, NU, NI, D, init=0.3)
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(torch.randn_like(p))
    g.project_()
    for p in g.parameters():
        assert (p >= 0).all()
    assert (g.dense_user_lambda() >= 0).all() and (g.dense_item_lambda() >= 0).all()


def test_fixed_side_is_not_learned() -> None:
    g = LambdaGranularity("u", NU, NI, D, init=0.4)
    assert [n for n, _ in g.named_parameters()] == ["lambda_user"]
    assert torch.equal(g.item_lambda(torch.tensor([1, 2])), torch.full((1, 1), 0.4))
    g2 = LambdaGranularity("fix", NU, NI, D, init=0.4)
    assert not g2.learnable and list(g2.parameters()) == []


def test_state_dict_round_trip() -> None:
    g = LambdaGranularity("dui", NU, NI, D, init=0.1)
    with torch.no_grad():
        g.lambda_user.uniform_()
    h = LambdaGranularity("dui", NU, NI, D, init=0.0)
    h.load_state_dict(g.state_dict())
    assert torch.equal(h.dense_user_lambda(), g.dense_user_lambda())
    assert torch.equal(h.dense_item_lambda(), g.dense_item_lambda())


def test_dsep_is_rendles_separate_user_and_item_vectors() -> None:
    """dsep (SGDA): λU[u, k] = λ_user[k] for every user, λI[i, k] = λ_item[k], two distinct vectors."""
    g = LambdaGranularity("dsep", NU, NI, D, init=0.0)
    assert [n for n, _ in g.named_parameters()] == ["lambda_user", "lambda_item"]
    assert g.user_storage is not g.item_storage
    with torch.no_grad():
        g.lambda_user.copy_(torch.arange(D, dtype=torch.float32).unsqueeze(0))
        g.lambda_item.copy_(10 + torch.arange(D, dtype=torch.float32).unsqueeze(0))
    assert torch.equal(g.dense_user_lambda(), torch.arange(D, dtype=torch.float32).expand(NU, D))
    assert torch.equal(g.dense_item_lambda(), (10 + torch.arange(D, dtype=torch.float32)).expand(NI, D))
    # gradients stay per side and dense ((1, d)): users never leak into the item vector
    (g.user_lambda(torch.tensor([0, 3, 3])).expand(3, D).sum()).backward()
    assert not g.lambda_user.grad.is_sparse and torch.equal(g.lambda_user.grad, torch.full((1, D), 3.0))
    assert g.lambda_item.grad is None
