"""Contract tests over the model registry: every model builds and traces; pruned at 0.3 it loses channels and
MACs and still runs; pruned at 0 it is an unchanged, independent copy."""

from __future__ import annotations

import re
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import autoprune
from autoprune.data.splits import IMAGENET_STATS, Split
from autoprune.errors import AutopruneError
from autoprune.metrics.costs import accuracy, count_macs, count_params
from autoprune.models.factory import MODELS, create_model, load_checkpoint
from autoprune.pruning.structural import ROOT_TYPES, out_width, structure

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
RESNET20_CKPT = SHARED / "weights" / "cifar10-resnet" / "resnet20.pt"
CIFAR10_TEST = SHARED / "datasets" / "cifar10" / "test.npz"

CIFAR_RESNETS = {"resnet20", "resnet32", "resnet44", "resnet56"}

CONTRACT_MODELS = MODELS.names()
# vit_b_16 runs at 32x32 (torchvision's image_size argument: 2x2 patches of 16) to keep the contract test fast.
MODEL_KWARGS = {"vit_b_16": {"image_size": 32}}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _input_shape(name: str) -> tuple[int, ...]:
    if name == "quickstart_cnn":
        return (2, 1, 8, 8)
    if name in CIFAR_RESNETS or name in MODEL_KWARGS:
        return (2, 3, 32, 32)
    return (2, 3, 64, 64)


def _registered(name: str) -> tuple[torch.nn.Module, torch.Tensor, list[str] | None]:
    """The registered model in eval mode (seeded), a small input batch, and the spec's ``prunable`` patterns."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **MODEL_KWARGS.get(name, {})).eval()
    return model, torch.randn(*_input_shape(name)), MODELS.get(name).prunable


def _widths(model: torch.nn.Module) -> dict[str, int]:
    """Conv/linear layer name -> output channels (features)."""
    return {n: out_width(m) for n, m in model.named_modules() if isinstance(m, ROOT_TYPES)}


@pytest.mark.parametrize("name", CONTRACT_MODELS)
def test_registered_model_pruned_at_0_3_loses_channels_and_macs_and_still_runs(name: str) -> None:
    model, x, prunable = _registered(name)
    with torch.no_grad():
        want = model(x)
    assert want.shape == (x.shape[0], 10)
    original = structure(model)

    pruned = autoprune.prune(model, x, ratios=0.3, prunable=prunable)

    before, after = _widths(model), _widths(pruned)
    narrowed = sorted(n for n, w in after.items() if w < before[n])
    assert narrowed, f"pruning {name} at 0.3 removed no channels from any layer"
    patterns = prunable if prunable is not None else getattr(model, "autoprune_prunable", None)
    outside = [n for n in narrowed if patterns is not None and not any(fnmatchcase(n, p) for p in patterns)]
    assert not outside, f"layers outside the prunable patterns {patterns} lost channels: {outside}"
    assert count_params(pruned) < count_params(model)
    with torch.no_grad():
        out = pruned.eval()(x)
    assert out.shape == want.shape and torch.isfinite(out).all()
    assert count_macs(pruned, x) < count_macs(model, x)
    assert structure(model) == original, "the original model must be left unpruned"
    with torch.no_grad():
        assert torch.equal(model(x), want), "the original model must be left unchanged"


@pytest.mark.parametrize("name", CONTRACT_MODELS)
def test_registered_model_pruned_at_0_is_an_unchanged_independent_copy(name: str) -> None:
    model, x, prunable = _registered(name)
    with torch.no_grad():
        want = model(x)

    same = autoprune.prune(model, x, ratios=0.0, prunable=prunable)

    assert same is not model, "prune must return a copy, not the model itself"
    assert count_params(same) == count_params(model) and structure(same) == structure(model)
    mine = {p.data_ptr() for p in model.parameters()}
    assert not [n for n, p in same.named_parameters() if p.data_ptr() in mine], "the copy shares the model's weights"
    with torch.no_grad():
        assert torch.equal(same.eval()(x), want)
        assert torch.equal(model(x), want), "the original model must be left unchanged"


@pytest.mark.parametrize("name, expected", [("resnet20", 269_722), ("resnet56", 853_018)])
def test_cifar_resnet_parameter_counts_match_he_et_al(name: str, expected: int) -> None:
    assert count_params(create_model(name, num_classes=10)) == expected


def test_module_factory_name_resolves_to_that_callable() -> None:
    model = create_model("torchvision.models:resnet18", num_classes=10)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 10
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_module_factory_with_unknown_module_or_attribute_raises_autoprune_error() -> None:
    with pytest.raises(AutopruneError, match="cannot import model module"):
        create_model("no_such_module_for_autoprune_tests:factory", num_classes=10)
    with pytest.raises(AutopruneError, match="no callable"):
        create_model("torchvision.models:no_such_factory", num_classes=10)


def test_a_module_in_the_working_folder_is_found_without_pythonpath(tmp_path, monkeypatch) -> None:
    """As uvicorn-style tools do: the folder autoprune runs in is searched first (the console script's own path
    does not hold it)."""
    (tmp_path / "mine_for_autoprune_tests.py").write_text("import torch\ndef net(num_classes=3):\n"
                                                          "    return torch.nn.Linear(4, num_classes)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert create_model("mine_for_autoprune_tests:net", num_classes=5).out_features == 5


def test_a_missing_module_says_where_it_was_looked_for_and_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AutopruneError, match=r"no module 'nowhere_for_autoprune' in the working folder "
                                             rf"\({re.escape(str(tmp_path))}\).*holds nowhere_for_autoprune\.py"):
        create_model("nowhere_for_autoprune:net", num_classes=10)
    # a module that is found but imports something missing: that import is named, not the module
    (tmp_path / "broken_for_autoprune_tests.py").write_text("import not_installed_for_autoprune\n")
    with pytest.raises(AutopruneError, match="No module named 'not_installed_for_autoprune'"):
        create_model("broken_for_autoprune_tests:net", num_classes=10)


def test_unknown_model_name_raises_autoprune_error_listing_valid_names() -> None:
    with pytest.raises(AutopruneError) as info:
        create_model("resnet21", num_classes=10)
    message = str(info.value)
    assert "resnet21" in message
    for name in MODELS.names():
        assert name in message


def test_load_checkpoint_into_a_different_architecture_says_it_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "resnet20.pt"
    torch.save(create_model("resnet20", num_classes=10).state_dict(), path)
    with pytest.raises(AutopruneError, match="does not fit"):
        load_checkpoint(create_model("resnet32", num_classes=10), path)


def test_load_checkpoint_of_a_missing_file_raises_autoprune_error(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match="checkpoint not found"):
        load_checkpoint(create_model("quickstart_cnn", num_classes=10), tmp_path / "missing.pt")


def test_load_checkpoint_unwraps_state_dict_key_and_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = create_model("quickstart_cnn", num_classes=10)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    torch.manual_seed(2)
    dst = load_checkpoint(create_model("quickstart_cnn", num_classes=10), path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def _require(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"shared file missing: {path} (expected ../shared relative to the repository root)")


def test_shared_resnet20_checkpoint_loads_into_registered_resnet20() -> None:
    _require(RESNET20_CKPT)
    model = load_checkpoint(create_model("resnet20", num_classes=10), RESNET20_CKPT)
    state = torch.load(RESNET20_CKPT, map_location="cpu", weights_only=True)
    assert len(state) == len(model.state_dict())
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_shared_resnet20_checkpoint_classifies_cifar10_test_images() -> None:
    """The option-A architecture must match the weights semantically, not just by parameter names."""
    _require(RESNET20_CKPT)
    _require(CIFAR10_TEST)
    data = np.load(CIFAR10_TEST)
    # rows are grouped by class: take every 40th image for a class-balanced sample of 250
    x = torch.from_numpy(np.ascontiguousarray(data["x"][::40].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(data["y"][::40].astype(np.int64))
    split = Split(x, y, torch.tensor(IMAGENET_STATS[0]), torch.tensor(IMAGENET_STATS[1]))
    model = load_checkpoint(create_model("resnet20", num_classes=10), RESNET20_CKPT)
    assert accuracy(model, split, batch_size=125) > 0.85  # published: 91.73 % on the full test set
