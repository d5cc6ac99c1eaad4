"""The architecture contract: every model autoprune accepts prunes structurally, and one it cannot is refused
before the search starts, naming the layer and the fix.

torchvision resnet18, resnet50, mobilenet_v2, efficientnet_b0, densenet121 and vit_b_16 (its attention pruned in
whole head dimensions, as torch-pruning documents for nn.MultiheadAttention), and user models with concatenation,
a grouped convolution and custom layers (tests/user_models.py). Inputs are small (32x32) to keep the sweep cheap;
the dependency graph does not depend on the resolution.
"""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
import torchvision
import yaml
from click.testing import CliRunner
from torch import nn

import autoprune
from autoprune.cli import main
from autoprune.errors import AutopruneError
from autoprune.metrics.costs import count_macs
from autoprune.pruning.graph_hints import failing_layer
from autoprune.pruning.prunability import freeze_unprunable
from autoprune.pruning.structural import build_layout, prune_with_plan, replay, structure
from tests import user_models
from tests.conftest import TINY_SPACE, TINY_STUDY

TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "vit_b_16"]


def _torchvision(name: str) -> nn.Module:
    kwargs = {"image_size": 32} if name.startswith("vit") else {}
    return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)


def _contract(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Ratio 0 changes nothing; ratio 0.3 runs, and removes MACs and channels. Returns the 0.3 model."""
    torch.manual_seed(0)
    model.eval()
    layout = build_layout(model, x)
    same, _ = prune_with_plan(model, x, 0.0, layout=layout)
    pruned, plan = prune_with_plan(model, x, 0.3, layout=layout)
    with torch.no_grad():
        before = model(x)
        assert torch.equal(same(x), before)
        out = pruned(x)
    assert out.shape == before.shape and torch.isfinite(out).all()
    macs, macs_pruned = count_macs(model, x), count_macs(pruned, x)
    assert macs_pruned < 0.85 * macs, (macs, macs_pruned)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    rebuilt = replay(copy.deepcopy(model), x, plan.history)  # the recorded plan rebuilds the same structure
    assert structure(rebuilt) == structure(pruned)
    return pruned


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_prune_structurally(name, one_intra_op_thread):
    model = _torchvision(name)
    pruned = _contract(model, torch.randn(2, 3, 32, 32))
    for m in pruned.modules():
        if isinstance(m, nn.MultiheadAttention):  # every head narrower by the same amount, none removed
            assert m.num_heads == 12 and m.embed_dim % m.num_heads == 0 and m.head_dim < 64
            assert m.head_dim == m.embed_dim // m.num_heads
    if name.startswith("vit"):
        assert pruned.hidden_dim == pruned.conv_proj.out_channels < 768


@pytest.mark.parametrize("factory", [user_models.branchy, user_models.mixing_with_pruner])
def test_user_model_with_concat_groups_and_custom_layers_prunes(factory):
    model = factory()
    x = torch.randn(2, 1, 8, 8)
    assert freeze_unprunable(model, x, build_layout(model, x))[1] == {}
    pruned = _contract(model, x)
    assert pruned.fuse.out_channels < 32 and pruned.grouped[0].groups == 4
    assert pruned.grouped[0].out_channels % 4 == 0 and pruned.scale.weight.numel() == pruned.grouped[0].out_channels


def test_a_group_torch_pruning_cannot_prune_is_kept_whole_naming_the_group_the_layer_and_why():
    model = user_models.mixing()
    x = torch.randn(2, 1, 8, 8)
    layout = build_layout(model, x)
    kept, frozen = freeze_unprunable(model, x, layout, source="space.yaml")
    assert list(frozen) == ["project"] and kept.names == [g for g in layout.names if g != "project"]
    line = frozen["project"]
    assert line.startswith("group 'project' (layers project) kept whole: pruning it breaks the model: ")
    assert "layer 'fc' fails on forward" in line and "\n" not in line
    assert "project" in kept.ignored
    with pytest.warns(UserWarning, match="autoprune.prune: group 'project'"):
        pruned = autoprune.prune(model, x, ratios=0.5)
    assert pruned.project.out_channels == model.project.out_channels and pruned(x).shape == (2, 10)


def test_a_model_every_group_of_which_breaks_is_refused_naming_the_group_the_layer_and_the_fix():
    model = user_models.mixing()
    x = torch.randn(2, 1, 8, 8)
    only = build_layout(model, x, prunable=["project"])
    with pytest.raises(AutopruneError) as err:
        freeze_unprunable(model, x, only, source="space.yaml")
    msg = err.value.one_line()
    assert msg.startswith("space.yaml: ignore: the model cannot be pruned: every group breaks it; pruning group "
                          "'project'")
    assert "layer 'fc' fails on forward" in msg and "mixer (ChannelMixer)" in msg
    assert "'ignore'" in msg and "customized_pruners" in msg and "\n" not in msg


def test_failing_layer_names_the_innermost_module_that_raised():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    layer, why = failing_layer(model, torch.randn(1, 1, 8, 8))
    assert layer == "1.1" and why.startswith("RuntimeError: mat1 and mat2")
    assert failing_layer(nn.Conv2d(1, 4, 3), torch.randn(1, 1, 8, 8)) is None


def _study(tmp_path, model_name: str, space_extra: dict | None = None):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(dict(TINY_SPACE, **(space_extra or {}))))
    doc = dict(TINY_STUDY, workdir=str(tmp_path / "run"),
               model=dict(TINY_STUDY["model"], name=model_name, kwargs={}, base_training={"epochs": 1}))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path / "study.yaml"


def test_search_keeps_a_breaking_group_whole_and_says_so(tmp_path):
    study = _study(tmp_path, "tests.user_models:mixing")
    result = CliRunner().invoke(main, ["search", str(study), "--n-trials", "2"])
    assert result.exit_code == 0, result.output
    said = [ln for ln in result.stderr.splitlines() if "kept whole" in ln]
    assert len(said) == 1 and "group 'project'" in said[0], result.stderr[-2000:]
    ost = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert list(ost.user_attrs["base"]["frozen"]) == ["project"]
    assert all("ratio.project" not in t.params for t in ost.trials)


