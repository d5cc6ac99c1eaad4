"""Contract tests over the scorer registry, and hand-checked channel choices for the simple criteria."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.metrics.costs import count_params
from autoprune.models.factory import create_model
from autoprune.pruning.one_shot import prune
from autoprune.pruning.scorers import SCORERS, CombinedImportance, resolve_scorer
from autoprune.pruning.structural import build_layout, prune_with_plan

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _quickstart() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The quickstart CNN (seeded, eval mode) with BatchNorm scales spread as in a trained model, and a batch."""
    torch.manual_seed(0)
    model = create_model("quickstart_cnn", num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)  # freshly built, every gamma is 1 and bn_scale would only see ties
    return model, torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))


def _calibration(name: str, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Calibration batches where the scorer declares it needs them (``ScorerSpec.needs``), else none."""
    return None if SCORERS.get(name).needs == "weights" else [(x, y)]


@pytest.mark.parametrize("name", SCORERS.names())
def test_every_registered_scorer_prunes_quickstart_cnn(name: str) -> None:
    model, x, y = _quickstart()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    pruned = prune(model, x, ratios=0.3, scorer=name, calibration=_calibration(name, x, y))

    assert count_params(pruned) < count_params(model)
    assert [pruned.features[i].out_channels for i in (0, 3, 7)] == [22, 44, 44]  # int(w * 0.7) of 32, 64, 64
    with torch.no_grad():
        out = pruned.eval()(x)
    assert out.shape == (16, 10)
    assert torch.isfinite(out).all()
    # scoring happens on the copy: the original keeps its weights and no gradients are left behind
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in pruned.parameters())


@pytest.mark.parametrize("name", [n for n in SCORERS.names() if SCORERS.get(n).needs != "weights"])
def test_scorer_that_needs_calibration_refuses_to_prune_without_it(name: str) -> None:
    model, x, _ = _quickstart()
    needs = SCORERS.get(name).needs
    with pytest.raises(AutopruneError, match=rf"scorer '{name}' needs calibration batches \({needs}\)"):
        prune(model, x, ratios=0.3, scorer=name)


def test_registered_scorers_each_prune_channels_of_their_own_choosing() -> None:
    """A registry that ignored the scorer's name, or gave two names one criterion, would prune the same channels."""
    chosen = {}
    for name in SCORERS.names():
        model, x, y = _quickstart()
        _, plan = prune_with_plan(model, x, 0.3, name, calibration=_calibration(name, x, y))
        chosen[name] = sorted((layer, sorted(idxs)) for layer, is_out, idxs in plan.history if is_out)
        assert len(chosen[name]) == 3, f"{name} pruned {len(chosen[name])} layers, expected features.0, .3 and .7"
    names = list(chosen)
    alike = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if chosen[a] == chosen[b]]
    assert not alike, f"these scorers pruned exactly the same channels of every layer: {alike}"


def test_registered_scorers_declare_what_they_need() -> None:
    needs = {name: resolve_scorer(name)[1] for name in SCORERS.names()}
    assert needs["taylor"] == "gradients"
    assert needs["combined"] == "gradients"
    assert needs["activation"] == "activations"
    assert needs["l1"] == needs["l2"] == needs["bn_scale"] == "weights"


def test_unknown_scorer_name_raises_listing_valid_names() -> None:
    with pytest.raises(AutopruneError) as info:
        resolve_scorer("l3")
    message = str(info.value)
    assert "l3" in message
    for name in SCORERS.names():
        assert name in message
    with pytest.raises(AutopruneError, match="valid names"):
        prune(create_model("quickstart_cnn", num_classes=10), torch.randn(1, 1, 8, 8), 0.3, scorer="l3")


def test_importance_object_is_accepted_as_a_scorer() -> None:
    importance = CombinedImportance(0.5)
    resolved, needs, display = resolve_scorer(importance)
    assert resolved is importance and needs == "gradients" and display == "CombinedImportance"


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_combined_importance_rejects_weight_outside_unit_interval(weight: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CombinedImportance(weight)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_combined_importance_accepts_the_interval_end_points(weight: float) -> None:
    assert CombinedImportance(weight).weight == weight


# ------------------------------------------------------------------------------------- hand-checked choices
def _tiny_net(first_filters: torch.Tensor) -> nn.Sequential:
    """Conv2d(1, 6, 3) -> ReLU -> Conv2d(6, 4, 3) -> pool -> Linear(4, 3), first conv's filters set by hand."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, bias=False), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():
        net[0].weight.copy_(first_filters)
    return net.eval()


def _prune_first_conv_half(net: nn.Sequential, scorer: str) -> tuple[nn.Sequential, list[int]]:
    x = torch.randn(2, 1, 8, 8)
    layout = build_layout(net, x)
    assert layout.names == ["0", "2"]
    pruned, plan = prune_with_plan(net, x, {"0": 0.5}, scorer, layout=layout)
    with torch.no_grad():
        assert pruned(x).shape == (2, 3)
    kept = []
    for row in pruned[0].weight:
        matches = [k for k in range(net[0].out_channels) if torch.equal(row, net[0].weight[k])]
        assert len(matches) == 1
        kept.append(matches[0])
    return pruned, kept


def test_l1_scorer_keeps_exactly_the_filters_with_the_largest_l1_norms() -> None:
    c = torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2, 1.0])  # filter k is filled with c[k]: L1 = 9 |c[k]|
    net = _tiny_net(c.view(6, 1, 1, 1).expand(6, 1, 3, 3).clone())
    pruned, kept = _prune_first_conv_half(net, "l1")
    assert kept == [1, 3, 5]
    assert pruned[0].out_channels == 3
    assert pruned[2].in_channels == 3
    assert torch.equal(pruned[2].weight, net[2].weight[:, [1, 3, 5]])  # the next layer's inputs follow
    assert pruned[2].out_channels == 4 and pruned[5].out_features == 3  # other groups untouched


def test_l1_and_l2_scorers_rank_spread_and_peaked_filters_differently() -> None:
    filters = torch.zeros(6, 1, 3, 3)
    filters[0] = 0.5  # spread:  L1 4.5, L2 1.5
    filters[1, 0, 1, 1] = 3.0  # peaked: L1 3.0, L2 3.0
    filters[2] = 0.6  # spread:  L1 5.4, L2 1.8
    filters[3, 0, 0, 0] = 4.0  # peaked: L1 4.0, L2 4.0
    filters[4] = 0.05  # tiny:  L1 0.45, L2 0.15
    filters[5, 0, 2, 2] = 3.5  # peaked: L1 3.5, L2 3.5
    net = _tiny_net(filters)
    assert _prune_first_conv_half(net, "l1")[1] == [0, 2, 3]
    assert _prune_first_conv_half(net, "l2")[1] == [1, 3, 5]


def test_bn_scale_scorer_keeps_the_channels_with_the_largest_gamma() -> None:
    torch.manual_seed(0)
    model = create_model("quickstart_cnn", num_classes=10).eval()
    gamma = torch.tensor([(-1.0) ** k * (k % 7 + 0.1 * k) for k in range(32)])
    with torch.no_grad():
        model.features[1].weight.copy_(gamma)
    x = torch.randn(2, 1, 8, 8)
    layout = build_layout(model, x)
    pruned, plan = prune_with_plan(model, x, {"features.0": 0.5}, "bn_scale", layout=layout)
    expected_kept = sorted(gamma.abs().argsort(descending=True)[:16].tolist())
    assert torch.equal(pruned.features[1].weight, gamma[expected_kept])
    assert torch.equal(pruned.features[0].weight, model.features[0].weight[expected_kept])
