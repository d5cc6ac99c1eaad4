"""Depth pruning: which residual blocks may be dropped, that dropping them removes compute, and that a model with
dropped blocks and pruned channels saves and reloads exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from autoprune.errors import AutopruneError
from autoprune.metrics.costs import count_macs
from autoprune.models.cifar_resnet import cifar_resnet
from autoprune.pruning.depth import drop_blocks, droppable_blocks
from autoprune.pruning.saving import load_pruned, save_pruned
from autoprune.pruning.structural import build_layout, prune_with_plan


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return cifar_resnet(20).eval()


X = torch.randn(2, 3, 32, 32)


def test_only_blocks_that_keep_their_input_shape_may_be_dropped(resnet20):
    # the first block of stages 2 and 3 halves the resolution and doubles the width: it must stay
    assert droppable_blocks(resnet20, X, ["layer*.*"]) == [
        "layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    assert droppable_blocks(resnet20, X, ["layer2.0", "layer3.2"]) == ["layer3.2"]
    # a pattern matching a block and its layers keeps the block only
    assert droppable_blocks(resnet20, X, ["layer1.1", "layer1.1.*"]) == ["layer1.1"]


def test_dropping_blocks_removes_their_macs_and_keeps_the_names_of_the_rest(resnet20):
    macs, per_module = count_macs(resnet20, X[:1], by_module=True)
    dropped = drop_blocks(copy.deepcopy(resnet20), ["layer1.1", "layer3.2"])
    assert count_macs(dropped, X[:1]) == macs - per_module["layer1.1"] - per_module["layer3.2"]
    assert isinstance(dropped.layer1[1], torch.nn.Identity) and dropped.layer1[2] is not None
    assert set(dict(dropped.named_modules())) >= {"layer1.2.conv1", "layer3.1.conv1"}
    with pytest.raises(AutopruneError, match="no module of that name"):
        drop_blocks(copy.deepcopy(resnet20), ["layer9.0"])


def test_dropped_and_pruned_model_saves_and_reloads_exactly(resnet20, tmp_path):
    layout = build_layout(resnet20, X[:1], prunable=["layer*.*.conv1"])
    base = drop_blocks(copy.deepcopy(resnet20), ["layer2.2"])
    pruned, plan = prune_with_plan(base, X[:1], 0.4, layout=layout, inplace=True)
    assert pruned.layer1[0].conv1.out_channels < 16
    save_pruned(pruned, plan.history, tmp_path / "m.pt", {"input_shape": [1, 3, 32, 32], "dropped": ["layer2.2"]})
    reloaded = load_pruned(tmp_path / "m.pt", cifar_resnet(20)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(X), pruned.eval()(X), atol=1e-5)


# ------------------------------------------------------------------------------------------ sensitivity scan
def test_narrowed_highs_keep_the_largest_ratio_within_the_drop():
    from autoprune.engine.sensitivity import narrowed_highs

    scores = {"robust": {0.25: 0.91, 0.5: 0.9, 0.75: 0.84}, "fragile": {0.25: 0.7, 0.5: 0.3, 0.75: 0.1},
              "middle": {0.25: 0.88, 0.5: 0.83, 0.75: 0.2}}
    assert narrowed_highs(scores, 0.92, 0.1, 0.7) == {"robust": 0.7, "fragile": 0.25, "middle": 0.5}
    assert narrowed_highs(scores, 0.92, 0.05, 0.8) == {"robust": 0.5, "fragile": 0.25, "middle": 0.25}


def test_sensitivity_scan_narrows_the_search_space_and_is_cached(write_study, tmp_path):
    from autoprune.config import load_study
    from autoprune.engine.context import prepare

    space = {"sensitivity": {"ratios": [0.3, 0.6], "max_drop": 0.02, "eval_images": 200}}
    study = load_study(write_study(space_overrides=space))
    notes: list[str] = []
    ctx = prepare(study, log=notes.append)
    assert any(n.startswith("sensitivity scan: 3 groups x 2 ratios") for n in notes)
    assert set(ctx.ratio_highs) == set(ctx.groups) and all(h in (0.3, 0.6) for h in ctx.ratio_highs.values())
    dists = ctx.distributions()
    assert all(dists[f"ratio.{g}"].high == pytest.approx(ctx.ratio_highs[g]) for g in ctx.groups)
    assert ctx.reference["ratio_highs"] == ctx.ratio_highs
    cached = list((tmp_path / "run").glob("sensitivity-*.json"))
    assert len(cached) == 1
    notes.clear()
    again = prepare(study, log=notes.append)  # a second worker reuses the scan
    assert again.ratio_highs == ctx.ratio_highs and not any(n.startswith("sensitivity scan: 3") for n in notes)
