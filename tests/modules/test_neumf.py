"""NeuMF: shapes, batched block scoring == per-pair scoring, losses, training reduces the loss."""

from __future__ import annotations

import functools

import pytest
import torch

from lopt.models.neumf import NeuMF
from lopt.modules.neumf import NeuMFModule
from tests.helpers.trainer import fit_batches

NU, NI, D, LAYERS = 9, 23, 6, [8, 6, 4]


def _module(seed: int = 0, **kw) -> NeuMFModule:
    args = dict(
        dim=D,
        mlp_layers=LAYERS,
        init_std=0.3,
        optimizer=functools.partial(torch.optim.Adam, lr=0.01),
        loss="bpr",
        lambda_value=0.0,
        grad_clip_norm=100.0,
    )
    args.update(kw)
    torch.manual_seed(seed)
    return NeuMFModule(NU, NI, **args)


def test_parameter_shapes_follow_the_config() -> None:
    net = NeuMF(NU, NI, D, LAYERS, init_std=0.1)
    assert net.user_gmf.shape == (NU, D) and net.item_gmf.shape == (NI, D)
    assert net.user_mlp.shape == (NU, LAYERS[0] // 2) and net.item_mlp.shape == (NI, LAYERS[0] // 2)
    assert [(m.in_features, m.out_features) for m in net.mlp] == [(8, 6), (6, 4)]
    assert (net.predict.in_features, net.predict.out_features) == (D + LAYERS[-1], 1)


def test_pair_and_block_output_shapes() -> None:
    net = NeuMF(NU, NI, D, LAYERS, init_std=0.1)
    users, items = torch.tensor([0, 3, 3, 8]), torch.tensor([1, 22, 5, 0])
    assert net(users, items).shape == (4,)
    assert net.score_users(torch.tensor([2, 7, 0])).shape == (3, NI)


@pytest.mark.parametrize("block_elements", [1 << 24, 40, 1])  # one chunk, several chunks, one item per chunk
def test_block_scoring_equals_per_pair_scoring(block_elements: int) -> None:
    torch.manual_seed(1)
    net = NeuMF(NU, NI, D, [10, 7, 5, 3], init_std=0.5).double()
    with torch.no_grad():  # non-zero biases, so the split first layer must carry them
        for layer in (*net.mlp, net.predict):
            layer.bias.normal_()
    users = torch.tensor([4, 0, 8, 4])
    block = net.score_users(users, max_block_elements=block_elements)
    uu = users.repeat_interleave(NI)
    ii = torch.arange(NI).repeat(len(users))
    with torch.no_grad():
        pairs = net(uu, ii).view(len(users), NI)
    assert torch.allclose(block, pairs, rtol=0, atol=1e-12)


def test_module_scores_through_the_network() -> None:
    module = _module(score_block_elements=17)
    users = torch.arange(NU)
    assert torch.equal(module.score_users(users), module.model.score_users(users, 17))


def test_bce_loss_is_pointwise_log_loss_on_positives_and_sampled_negatives() -> None:
    module = _module(loss="bce").double()
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
    with torch.no_grad():
        yp, yn = module.model(users, pos), module.model(users, neg)
        expected = -(torch.log(torch.sigmoid(yp)).sum() + torch.log(1 - torch.sigmoid(yn)).sum()) / 6
        assert torch.allclose(module.batch_loss(users, pos, neg), expected)
    module_bpr = _module(loss="bpr").double()
    with torch.no_grad():
        yp, yn = module_bpr.model(users, pos), module_bpr.model(users, neg)
        assert torch.allclose(module_bpr.batch_loss(users, pos, neg), -torch.log(torch.sigmoid(yp - yn)).mean())


def test_penalty_is_batch_form_over_both_towers() -> None:
    module = _module(lambda_value=0.5).double()
    users, pos, neg = torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([3, 1])
    m = module.model
    expected = (
        0.5
        / 2
        * sum(
            t[r].square().sum()
            for t, r in (
                (m.user_gmf, users),
                (m.user_mlp, users),
                (m.item_gmf, pos),
                (m.item_mlp, pos),
                (m.item_gmf, neg),
                (m.item_mlp, neg),
            )
        )
    )
    assert torch.allclose(module.penalty(users, pos, neg), expected)


@pytest.mark.parametrize("loss", ["bpr", "bce"])
def test_training_reduces_the_loss_on_a_tiny_problem(loss: str) -> None:
    """Users 0..4 like items 0..9, users 5..8 like items 10..22; training must fit that."""
    g = torch.Generator().manual_seed(0)
    n = 256
    users = torch.randint(0, NU, (n,), generator=g)
    low = users < 5
    pos = torch.where(low, torch.randint(0, 10, (n,), generator=g), torch.randint(10, NI, (n,), generator=g))
    neg = torch.where(low, torch.randint(10, NI, (n,), generator=g), torch.randint(0, 10, (n,), generator=g))
    batches = [{"train": (users[k : k + 64], pos[k : k + 64], neg[k : k + 64])} for k in range(0, n, 64)]
    module = _module(loss=loss, lambda_value=1e-4, init_std=0.1)
    with torch.no_grad():
        before = module.batch_loss(users, pos, neg).item()
    fit_batches(module, batches, max_epochs=15)
    with torch.no_grad():
        after = module.batch_loss(users, pos, neg).item()
        scores = module.score_users(torch.arange(NU))
    assert after < 0.5 * before, (before, after)
    liked = torch.zeros(NU, NI, dtype=torch.bool)
    liked[:5, :10] = True
    liked[5:, 10:] = True
    # every user ranks its liked block above the other block on average
    assert bool(((scores * liked).sum(1) / liked.sum(1) > (scores * ~liked).sum(1) / (~liked).sum(1)).all())


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"loss": "mse"}, "model.loss"),
        ({"lambda_value": -1.0}, "model.lambda_value"),
        ({"mlp_layers": [7, 4]}, "model.mlp_layers"),
        ({"mlp_layers": [8]}, "model.mlp_layers"),
        ({"score_block_elements": 0}, "model.score_block_elements"),
    ],
)
def test_bad_settings_name_the_config_key(kw: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _module(**kw)
