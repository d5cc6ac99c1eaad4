"""The per-group cost model against real pruning, and exact-cost placement of an allocation on a target."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from autoprune.engine.allocation import TOLERANCE, place, ratios_at
from autoprune.metrics.costs import count_macs
from autoprune.models.factory import create_model, resolve_model
from autoprune.pruning.macs_model import build_cost_model, kept_channels
from autoprune.pruning.structural import build_layout, prune_with_plan

CASES = [("resnet20", (1, 3, 32, 32), "dependency", 1e-9), ("resnet20", (1, 3, 32, 32), "stage", 1e-9),
         ("quickstart_cnn", (1, 1, 8, 8), "dependency", 5e-3), ("mobilenet_v2", (1, 3, 32, 32), "dependency", 5e-3),
         # timm: BatchNorm fused with its activation in one module that has children; squeeze-excitation
         pytest.param("timm:efficientnet_b0", (1, 3, 32, 32), "dependency", 1e-3, marks=pytest.mark.skipif(
             importlib.util.find_spec("timm") is None, reason="timm is an optional extra"))]


def _setup(name, shape, by):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(*shape)
    stages = resolve_model(name).stages if by == "stage" else None
    layout = build_layout(model, x, by=by, named=stages, prunable=getattr(model, "autoprune_prunable", None))
    return model, x, layout


def test_kept_channels_follows_torch_pruning_and_round_to():
    assert [kept_channels(64, r) for r in (0.0, 0.3, 0.5)] == [64, 44, 32]
    assert [kept_channels(16, r, 8) for r in (0.2, 0.3, 0.75)] == [16, 8, 8]


@pytest.mark.parametrize("name,shape,by,tol", CASES)
@pytest.mark.parametrize("round_to", [None, 4])
def test_predicted_macs_match_the_pruned_models_count(name, shape, by, tol, round_to):
    model, x, layout = _setup(name, shape, by)
    cost = build_cost_model(model, x, layout, round_to)
    assert cost.base == count_macs(model, x)
    rnd = random.Random(7)
    for _ in range(2):
        ratios = {g: rnd.uniform(0.0, 0.8) for g in layout.names}
        pruned, _ = prune_with_plan(model, x, ratios, "l1", layout=layout, round_to=round_to)
        true = count_macs(pruned, x)
        assert true < cost.base
        assert cost.macs(ratios) == pytest.approx(true, rel=tol)


def test_ratios_at_clips_to_each_groups_bounds():
    assert ratios_at({"a": 2.0, "b": 0.0}, 0.5, {"a": (0.0, 0.7), "b": (0.2, 0.7)}) == {"a": 0.7, "b": 0.2}


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_place_lands_resnet20_candidates_within_the_tolerance_of_each_target(target):
    model, x, layout = _setup("resnet20", (1, 3, 32, 32), "dependency")
    cost = build_cost_model(model, x, layout)
    bounds = {g: (0.0, 0.9) for g in layout.names}
    rnd = random.Random(int(target * 10))
    for _ in range(5):
        weights = {g: rnd.uniform(0.05, 1.0) for g in layout.names}
        p = place(weights, target, cost.reduction, bounds, nudge=cost.channel_steps())
        assert p.within and p.miss <= TOLERANCE, (p.reduction, target)
        pruned, _ = prune_with_plan(model, x, p.ratios, "l1", layout=layout)
        assert cost.base / count_macs(pruned, x) == pytest.approx(target, rel=TOLERANCE)
    # uniform pruning moves every layer a channel at once and can step over the target: one-channel nudges of
    # single groups land it, keeping every group within a channel of the uniform ratio
    coarse = place({g: 1.0 for g in layout.names}, target, cost.reduction, bounds)
    assert len(set(coarse.ratios.values())) == 1
    steps = cost.channel_steps()
    uniform = place({g: 1.0 for g in layout.names}, target, cost.reduction, bounds, nudge=steps)
    assert uniform.within
    assert all(abs(r - coarse.ratios[g]) <= steps[g] + 1e-12 for g, r in uniform.ratios.items())


def test_place_says_when_a_target_is_out_of_reach():
    model, x, layout = _setup("resnet20", (1, 3, 32, 32), "dependency")
    cost = build_cost_model(model, x, layout)
    p = place({g: 1.0 for g in layout.names}, 50.0, cost.reduction, {g: (0.0, 0.5) for g in layout.names})
    assert not p.within and set(p.ratios.values()) == {0.5} and p.reduction < 50.0


def test_place_refuses_negative_weights_and_targets():
    with pytest.raises(ValueError, match="weights must be >= 0"):
        place({"a": -1.0}, 2.0, lambda r: 1.0, {"a": (0.0, 0.5)})
    with pytest.raises(ValueError, match="must be > 0"):
        place({"a": 1.0}, 0.0, lambda r: 1.0, {"a": (0.0, 0.5)})
