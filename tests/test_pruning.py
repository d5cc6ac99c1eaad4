"""Structural pruning: correctness on option-A CIFAR ResNets, group layouts, ratio validation, replay and saving."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.metrics.costs import count_macs, count_params
from autoprune.models.factory import MODELS, create_model, load_checkpoint
from autoprune.pruning.one_shot import prune
from autoprune.pruning.saving import load_pruned, save_pruned
from autoprune.pruning.structural import build_layout, prune_with_plan, replay, structure

REPO_ROOT = Path(__file__).resolve().parents[1]
RESNET20_CKPT = REPO_ROOT.parent / "shared" / "weights" / "cifar10-resnet" / "resnet20.pt"
BLOCKS = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]  # resnet20: 3 stages of 3 blocks
WIDTH = {"layer1": 16, "layer2": 32, "layer3": 64}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BN non-trivial affine parameters and running statistics, so masking checks mean something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def _resnet20() -> nn.Module:
    """resnet20 with the shared pretrained weights if present, else a seeded random init with randomised BN."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    if RESNET20_CKPT.is_file():
        load_checkpoint(model, RESNET20_CKPT)
    else:
        _randomise_batchnorm(model, torch.Generator().manual_seed(0))
    return model.eval()


@pytest.fixture(scope="module")
def resnet20_pruned():
    """(original, x, pruned, plan): resnet20 pruned at 0.3 with l1 over its registered (conv1-only) layout."""
    model = _resnet20()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    spec = MODELS.get("resnet20")
    layout = build_layout(model, x, by="dependency", prunable=spec.prunable)
    pruned, plan = prune_with_plan(model, x, 0.3, "l1", layout=layout)
    return model, x, pruned.eval(), plan


def _conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ------------------------------------------------------------------------------------- option-A CIFAR ResNet
def test_resnet20_registered_layout_has_one_group_per_block_conv1(resnet20_pruned) -> None:
    model, x, _, _ = resnet20_pruned
    layout = build_layout(model, x, by="dependency", prunable=MODELS.get("resnet20").prunable)
    assert layout.names == [f"{b}.conv1" for b in BLOCKS]
    assert layout.output_layer == "linear"
    assert {"linear", "conv1"} <= set(layout.ignored)
    assert all(f"{b}.conv2" in layout.ignored for b in BLOCKS)


def test_resnet20_pruned_model_runs_and_has_fewer_macs_and_params(resnet20_pruned) -> None:
    model, x, pruned, _ = resnet20_pruned
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (8, 10)
    assert torch.isfinite(out).all()
    assert count_macs(pruned, x[:1]) < count_macs(model, x[:1])
    assert count_params(pruned) < count_params(model)


def test_resnet20_prune_removes_only_block_inner_channels(resnet20_pruned) -> None:
    model, _, pruned, plan = resnet20_pruned
    before, after = _conv_widths(model), _conv_widths(pruned)
    # residual channels (stem and every block's conv2) are coupled through the zero-padding shortcut: kept
    assert after["conv1"] == 16
    assert pruned.bn1.num_features == 16
    assert pruned.linear.in_features == 64 and pruned.linear.out_features == 10
    for block in BLOCKS:
        assert after[f"{block}.conv2"] == before[f"{block}.conv2"], block
        # torch-pruning keeps int(width * (1 - 0.3)) of each block's inner channels: 16 -> 11, 32 -> 22, 64 -> 44
        assert after[f"{block}.conv1"] == {16: 11, 32: 22, 64: 44}[WIDTH[block.split(".")[0]]], block
    pruned_layers = {name for name, _, _ in plan.history}
    assert pruned_layers == {f"{b}.conv1" for b in BLOCKS}
    assert all(is_out for _, is_out, _ in plan.history)


def _removed_out_channels(plan) -> dict[str, list[int]]:
    return {name: sorted(int(i) for i in idxs) for name, is_out, idxs in plan.history if is_out}


def test_resnet20_pruned_output_equals_original_with_removed_channels_masked(resnet20_pruned) -> None:
    model, x, pruned, plan = resnet20_pruned
    removed = _removed_out_channels(plan)
    assert set(removed) == {f"{b}.conv1" for b in BLOCKS}

    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    orig_modules = dict(model.named_modules())
    pruned_modules = dict(pruned.named_modules())
    for conv_name, idxs in removed.items():
        block = conv_name.rsplit(".", 1)[0]
        keep = [i for i in range(orig_modules[conv_name].out_channels) if i not in set(idxs)]
        # the kept filters are the original filters, in order
        assert torch.equal(pruned_modules[conv_name].weight, orig_modules[conv_name].weight[keep]), conv_name
        with torch.no_grad():  # relu(bn1(conv1(x))) == 0 on removed channels
            modules[f"{block}.bn1"].weight[idxs] = 0.0
            modules[f"{block}.bn1"].bias[idxs] = 0.0

    with torch.no_grad():
        want, got, unmasked = masked(x), pruned(x), model(x)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(got, unmasked, atol=1e-4), "masking must matter, or the check above proves nothing"


def test_resnet20_l1_removes_the_lowest_l1_filters_of_each_block(resnet20_pruned) -> None:
    model, _, _, plan = resnet20_pruned
    modules = dict(model.named_modules())
    for conv_name, idxs in _removed_out_channels(plan).items():
        l1 = modules[conv_name].weight.detach().abs().sum(dim=(1, 2, 3))
        assert idxs == sorted(l1.argsort()[: len(idxs)].tolist()), conv_name


def test_prune_never_returns_a_model_that_cannot_run_forward() -> None:
    model = _resnet20()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    try:
        pruned = prune(model, x, ratios=0.3, scorer="l1")
    except AutopruneError:
        return  # refusing a plan it cannot apply correctly is an acceptable outcome
    with torch.no_grad():
        assert pruned.eval()(x).shape == (2, 10)


# ------------------------------------------------------------------------------------------ quickstart CNN
def test_quickstart_cnn_l1_half_ratio_halves_every_conv_and_keeps_the_classifier() -> None:
    torch.manual_seed(0)
    model = create_model("quickstart_cnn", num_classes=10).eval()
    x = torch.randn(2, 1, 8, 8)
    pruned = prune(model, x, ratios=0.5, scorer="l1", groups="dependency")
    assert [pruned.features[i].out_channels for i in (0, 3, 7)] == [16, 32, 32]
    assert [pruned.features[i].num_features for i in (1, 4, 8)] == [16, 32, 32]
    assert pruned.classifier.in_features == 32
    assert pruned.classifier.out_features == 10
    assert [model.features[i].out_channels for i in (0, 3, 7)] == [32, 64, 64], "the original must be unchanged"
    with torch.no_grad():
        assert pruned.eval()(x).shape == (2, 10)


# ----------------------------------------------------------------------------------------- named / stage groups
@pytest.fixture(scope="module")
def resnet20_stage_layout():
    model = _resnet20()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    spec = MODELS.get("resnet20")
    layout = build_layout(model, x, by="stage", named=spec.stages, prunable=spec.prunable)
    return model, x, layout


def test_stage_layout_names_the_three_stages_with_three_roots_each(resnet20_stage_layout) -> None:
    _, _, layout = resnet20_stage_layout
    assert layout.names == ["layer1", "layer2", "layer3"]
    for stage in layout.names:
        assert sorted(layout.roots[stage]) == [f"{stage}.{b}.conv1" for b in range(3)]
    assert layout.channels == {"layer1": 48, "layer2": 96, "layer3": 192}


def test_stage_ratio_prunes_only_that_stage(resnet20_stage_layout) -> None:
    model, x, layout = resnet20_stage_layout
    pruned, plan = prune_with_plan(model, x, {"layer2": 0.5}, "l1", layout=layout)
    assert plan.ratios == {"layer1": 0.0, "layer2": 0.5, "layer3": 0.0}
    widths = _conv_widths(pruned)
    orig = dict(model.named_modules())
    for block in BLOCKS:
        stage = block.split(".")[0]
        expected = 16 if stage == "layer2" else WIDTH[stage]
        assert widths[f"{block}.conv1"] == expected, block
        if stage != "layer2":  # untouched stages keep their exact weights
            assert torch.equal(dict(pruned.named_modules())[f"{block}.conv1"].weight, orig[f"{block}.conv1"].weight)
    assert {name for name, _, _ in plan.history} == {f"layer2.{b}.conv1" for b in range(3)}
    with torch.no_grad():
        assert pruned.eval()(x).shape == (2, 10)


@pytest.mark.parametrize("ratios,widths", [
    ({"layer1": 0.3, "layer2": 0.75, "layer3": 0.3}, {"layer1": 8, "layer2": 8, "layer3": 48}),
    ({"layer1": 0.75, "layer2": 0.5, "layer3": 0.05}, {"layer1": 8, "layer2": 16, "layer3": 64}),
])
def test_round_to_keeps_the_nearest_multiple_and_never_a_whole_layer(resnet20_stage_layout, ratios, widths) -> None:
    """torch-pruning alone rounds the kept count down: 16 channels at 0.75 keep 4 -> 0, and the layer is skipped."""
    model, x, layout = resnet20_stage_layout
    pruned, plan = prune_with_plan(model, x, ratios, "l1", layout=layout, round_to=8)
    got = _conv_widths(pruned)
    for block in BLOCKS:
        assert got[f"{block}.conv1"] == widths[block.split(".")[0]], block
    rebuilt = replay(copy.deepcopy(model), x, plan.history)
    assert structure(rebuilt) == structure(pruned)
    with torch.no_grad():
        assert pruned.eval()(x).shape == (2, 10)


def test_unknown_group_in_ratio_mapping_raises_listing_valid_groups(resnet20_stage_layout) -> None:
    model, x, layout = resnet20_stage_layout
    with pytest.raises(AutopruneError) as info:
        prune_with_plan(model, x, {"layer4": 0.5}, "l1", layout=layout)
    message = str(info.value)
    assert "layer4" in message
    for stage in ("layer1", "layer2", "layer3"):
        assert stage in message


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_zero_to_one_raises(resnet20_stage_layout, ratio: float) -> None:
    model, x, layout = resnet20_stage_layout
    with pytest.raises(AutopruneError, match=r"\[0, 1\)"):
        prune_with_plan(model, x, ratio, "l1", layout=layout)
    with pytest.raises(AutopruneError, match=r"\[0, 1\)"):
        prune_with_plan(model, x, {"layer3": ratio}, "l1", layout=layout)


def test_stage_grouping_without_named_groups_raises(resnet20_stage_layout) -> None:
    model, x, _ = resnet20_stage_layout
    with pytest.raises(AutopruneError, match="named groups"):
        build_layout(model, x, by="stage", named=None, prunable=MODELS.get("resnet20").prunable)


# ------------------------------------------------------------------------------------------ replay and saving
@pytest.mark.parametrize("serialised", [False, True], ids=["raw_history", "to_dict_history"])
def test_replaying_history_on_a_fresh_model_rebuilds_the_same_structure(resnet20_pruned, serialised: bool) -> None:
    _, x, pruned, plan = resnet20_pruned
    history = plan.to_dict()["history"] if serialised else plan.history
    fresh = create_model("resnet20", num_classes=10).eval()
    assert structure(fresh) != structure(pruned)
    rebuilt = replay(fresh, x[:1], history)
    assert rebuilt is fresh
    assert structure(rebuilt) == structure(pruned)


def test_save_pruned_and_load_pruned_round_trip(resnet20_pruned, tmp_path: Path) -> None:
    _, x, pruned, plan = resnet20_pruned
    path = tmp_path / "models" / "pruned.pt"
    save_pruned(pruned, plan.to_dict()["history"], path, {"input_shape": [1, 3, 32, 32], "scorer": plan.scorer})

    blob = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code in the file
    assert blob["format"] == "autoprune.pruned/1"
    assert blob["meta"]["input_shape"] == [1, 3, 32, 32]

    loaded = load_pruned(path, create_model("resnet20", num_classes=10))
    assert structure(loaded) == structure(pruned)
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x), atol=1e-6)
    assert not list(tmp_path.glob("models/.*.tmp")), "atomic save must not leave its temporary file"


def test_save_pruned_requires_input_shape(resnet20_pruned, tmp_path: Path) -> None:
    _, _, pruned, plan = resnet20_pruned
    with pytest.raises(ValueError, match="input_shape"):
        save_pruned(pruned, plan.to_dict()["history"], tmp_path / "x.pt", {})


def test_load_pruned_rejects_a_plain_state_dict_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(create_model("quickstart_cnn", num_classes=10).state_dict(), path)
    with pytest.raises(AutopruneError, match="not an autoprune pruned-model file"):
        load_pruned(path, create_model("quickstart_cnn", num_classes=10))


# ------------------------------------------------------------------------------------------------ errors
def test_model_whose_only_layer_is_the_output_layer_has_no_prunable_groups() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    with pytest.raises(AutopruneError, match="no prunable groups"):
        build_layout(model, torch.randn(1, 1, 8, 8))


def test_gradient_scorer_without_calibration_batches_raises() -> None:
    model = create_model("quickstart_cnn", num_classes=10).eval()
    with pytest.raises(AutopruneError, match="calibration"):
        prune(model, torch.randn(2, 1, 8, 8), ratios=0.3, scorer="taylor")


def test_ratio_zero_everywhere_returns_an_unpruned_copy_with_empty_history() -> None:
    model = create_model("quickstart_cnn", num_classes=10).eval()
    x = torch.randn(2, 1, 8, 8)
    pruned, plan = prune_with_plan(model, x, 0.0, "l1")
    assert pruned is not model
    assert plan.history == []
    assert structure(pruned) == structure(model)


def test_a_dependency_graph_that_takes_too_long_is_a_clear_error():
    import time

    from autoprune.errors import AutopruneError

    class Slow(torch.nn.Sequential):
        def forward(self, x):
            time.sleep(0.5)
            return super().forward(x)

    said = []
    model = Slow(torch.nn.Conv2d(1, 4, 1), torch.nn.Conv2d(4, 2, 1))
    with pytest.raises(AutopruneError, match=r"torch-pruning took longer than 0.3 s over this model \(3 modules\), "
                                             "tracing it; set AUTOPRUNE_GRAPH_SECONDS"):
        build_layout(model, torch.randn(1, 1, 4, 4), seconds=0.3, log=said.append)
    assert build_layout(model, torch.randn(1, 1, 4, 4), seconds=5).names == ["0"]


def test_a_model_caching_derived_tensors_is_copied_and_pruned():
    class Cached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)
            self.head = torch.nn.Linear(8, 4)
            self.cache = {}

        def forward(self, x):
            self.cache["scale"] = self.bn.weight.abs() + 1  # derived from a parameter, kept between calls
            h = torch.relu(self.bn(self.conv(x))) * self.cache["scale"].view(1, -1, 1, 1)
            return self.head(h.mean((2, 3)))

    model = Cached().eval()
    x = torch.randn(2, 3, 8, 8)
    model(x)
    with pytest.raises(RuntimeError, match="deepcopy protocol"):
        copy.deepcopy(model)
    pruned = prune(model, x, ratios=0.5)
    assert pruned.conv.out_channels == 4 and pruned(x).shape == (2, 4) and "scale" in model.cache
