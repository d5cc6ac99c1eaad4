"""A user's own data set (``data.name: "package.module:factory"``, factories in tests/user_data.py), and the
refusal of a model whose input channels or class count do not fit the data, before anything runs or is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from autoprune.cli import main
from autoprune.config import DataConfig, load_study
from autoprune.data.splits import DATASETS, Source, load_splits
from autoprune.errors import AutopruneError, ConfigError
from autoprune.models.factory import QuickstartCNN
from autoprune.models.fit_check import check_model_fits
from tests import user_data


def _made():
    return user_data.MADE[-1]


def _x(split) -> torch.Tensor:
    """All of a split's raw images (a user data set's splits are streamed)."""
    return split.read(torch.arange(len(split)))[0]


# ------------------------------------------------------------------------------------------------- loading
def test_a_pair_of_data_sets_loads_with_classes_from_labels_and_their_own_statistics():
    s = load_splits(DataConfig(name="tests.user_data:rgb"))
    assert s.num_classes == 4  # labels 0-3
    assert (len(s.train), len(s.val), len(s.test), len(s.test_full)) == (96, 24, 40, 40)
    assert _x(s.train).shape[1:] == (3, 8, 8) and _x(s.train).dtype == torch.uint8
    x = _x(s.train).double() / 255  # no mean/std given: the training split's own, per channel
    assert s.train.mean.tolist() == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert s.train.std.tolist() == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    assert s.info["dataset"] == "tests.user_data:rgb" and s.info["test_is_official"] is True


def test_a_dataclass_may_give_the_class_count_and_normalisation_and_data_mean_overrides_it():
    s = load_splits(DataConfig(name="tests.user_data:gray"))
    assert s.num_classes == 5, "given by the factory, although the labels only reach 2"
    assert _x(s.train).shape[1:] == (1, 8, 8)
    assert s.train.mean.tolist() == [0.25] and s.train.std.tolist() == [0.5]
    s = load_splits(DataConfig(name="tests.user_data:gray", mean=[0.1], std=[0.2]))
    assert s.train.mean.tolist() == pytest.approx([0.1]) and s.val.std.tolist() == pytest.approx([0.2])


def test_the_factory_gets_data_kwargs_and_data_root():
    s = load_splits(DataConfig(name="tests.user_data:rgb", root="/somewhere", kwargs={"n_train": 30, "classes": 3}))
    assert len(s.train) + len(s.val) == 30 and s.num_classes == 3
    with pytest.raises(AutopruneError, match="unexpected keyword argument 'root'"):
        load_splits(DataConfig(name="tests.user_data:gray", root="/somewhere"))  # gray() takes no root


@pytest.mark.parametrize("val_source,subset", [("train", None), ("train", 25), ("test", None), ("test", 40)])
@pytest.mark.parametrize("as_float", [False, True])
def test_a_factory_gives_the_splits_a_registered_source_of_the_same_images_gives(monkeypatch, val_source, subset,
                                                                                   as_float):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (90, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 3, 90).astype(np.int64)
    monkeypatch.setitem(DATASETS._entries, "arrays",
                        lambda cfg, rng: Source(x[:60], y[:60], x[60:], y[60:], 3, ((0.5,), (0.25,))))
    settings = {"val_source": val_source, "val_fraction": 0.3, "train_subset": subset, "seed": 7}
    ours = load_splits(DataConfig(name="arrays", **settings))
    theirs = load_splits(DataConfig(name="tests.user_data:arrays", **settings, kwargs={
        "x_train": x[:60], "y_train": y[:60], "x_test": x[60:], "y_test": y[60:], "as_float": as_float}))
    for split in ("train", "val", "test", "test-full"):
        a, b = ours.get(split), theirs.get(split)
        assert torch.equal(a.y, b.y), split
        assert torch.allclose(a.prepare(_x(a)), b.prepare(_x(b)), atol=1e-5), split
    assert theirs.num_classes == 3 and theirs.info["sizes"] == ours.info["sizes"]


@pytest.mark.parametrize("val_source,expected_train_reads", [("test", 10), ("train", 24 + 10)])
def test_train_subset_reads_only_the_subset(val_source, expected_train_reads):
    s = load_splits(DataConfig(name="tests.user_data:rgb", val_source=val_source, train_subset=10, seed=3, num_workers=0,
                               memory_mb=0))  # streamed: holding them would read each once more
    train, test = _made()
    assert len(s.train) == 10
    assert len(train.reads) == expected_train_reads == len(set(train.reads)), "each needed item read once"
    assert sorted(test.reads) == list(range(40)), "the test set is read whole, once"
    again = load_splits(DataConfig(name="tests.user_data:rgb", val_source=val_source, train_subset=10, seed=3, num_workers=0,
                       memory_mb=0))
    assert _made()[0].reads == train.reads and torch.equal(_x(again.train), _x(s.train)), "seeded"
    other = load_splits(DataConfig(name="tests.user_data:rgb", val_source=val_source, train_subset=10, seed=4, num_workers=0))
    assert not torch.equal(_x(other.train), _x(s.train))


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_pil_images_are_read_as_uint8_chw(mode, channels):
    s = load_splits(DataConfig(name="tests.user_data:pil", kwargs={"mode": mode}))
    assert _x(s.train).shape[1:] == (channels, 8, 8) and _x(s.train).dtype == torch.uint8 and s.num_classes == 2


# ---------------------------------------------------------------------------------------------- mistakes
@pytest.mark.parametrize("factory,kwargs,expected", [
    ("raises", {}, "data factory 'tests.user_data:raises' failed: RuntimeError: the disk is on fire"),
    ("three_things", {}, "returned a tuple of length 3; expected (train, test)"),
    ("not_data_sets", {}, "returned a train set of type int; expected a map-style"),
    ("iterable", {}, "returned a train set of type Stream; expected a map-style"),
    ("unknown_keys", {}, "returned a mapping with unknown keys ['classes']"),
    ("broken", {"kind": "raises"}, "reading train item 3 failed: KeyError"),
    ("broken", {"kind": "image", "part": "test"}, "test item 3: the image is a str; expected a CHW tensor"),
    ("broken", {"kind": "label"}, "train item 3: the label is 2.5; expected an integer class index"),
    ("broken", {"kind": "negative"}, "train item 3: the label is -1; expected a class index >= 0"),
    ("broken", {"kind": "pair"}, "train item 3: it is a tuple, not an (image, label) pair"),
    ("broken", {"kind": "shape"}, "the image has shape [8, 8]; expected CHW"),
    ("broken", {"kind": "size"}, ("train item 3 is a [3, 4, 8] torch.uint8 image but the first image read is "
                                  "[3, 8, 8] torch.uint8")),
    ("floats_out_of_range", {}, "the test images are floats in [0, 255]; expected floats in [0, 1]"),
    ("arrays", {"x_train": np.zeros((4, 1, 2, 2), np.uint8), "y_train": np.array([0, 1, 2, 7]),
                "x_test": np.zeros((2, 1, 2, 2), np.uint8), "y_test": np.array([0, 1])},
     "has label 7 but 3 classes"),
])
def test_a_bad_factory_is_one_line_naming_data_name_and_what_was_wrong(factory, kwargs, expected):
    with pytest.raises(AutopruneError) as err:
        load_splits(DataConfig(name=f"tests.user_data:{factory}", kwargs=kwargs))
    assert err.value.field == "data.name"
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("data,expected", [
    ({"name": "no_such_module_for_autoprune:make"}, "cannot import data module 'no_such_module_for_autoprune'"),
    ({"name": "tests.user_data:no_such_factory"}, "'tests.user_data' has no callable 'no_such_factory'"),
    ({"name": "digitz"}, "valid names: cifar10, cifar100, digits, imagefolder; or a package.module:factory"),
    ({"name": "digits", "kwargs": {"n": 3}}, "data.kwargs is only for a package.module:factory data set"),
    ({"name": "tests.user_data:rgb", "kwargs": {"root": "x"}}, "give the folder as data.root"),
])
def test_a_data_name_that_cannot_be_resolved_is_refused_on_load(write_study, data, expected):
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"data": data}))
    assert err.value.field == "data" + (".name" if "kwargs" not in data else "")
    assert expected in err.value.message, err.value.message


def test_empty_kwargs_are_left_out_of_the_dump_so_older_fingerprints_hold():
    assert "kwargs" not in DataConfig(name="digits").model_dump()
    assert DataConfig(name="tests.user_data:rgb", kwargs={"n_train": 9}).model_dump()["kwargs"] == {"n_train": 9}


# ---------------------------------------------------------------------------------------- the model fits
class LinearFirst(nn.Module):
    """Declares its classifier before its stem (registration order is not call order), and catches Exception."""

    def __init__(self, in_features: int = 64, num_classes: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(16, num_classes)
        self.stem = nn.Linear(in_features, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.fc(torch.relu(self.stem(x.flatten(1))))
        except Exception:  # noqa: BLE001 - a model that hides its own errors must not hide the check's stop
            return torch.zeros(x.shape[0], self.fc.out_features)


def test_a_fitting_model_passes_and_keeps_its_modes_and_buffers():
    model = QuickstartCNN(num_classes=4, in_channels=3, width=8)
    model.train()
    model.features[1].eval()  # a mixed state, restored as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_model_fits(model, torch.rand(1, 3, 8, 8) * 5, 4, "quickstart_cnn")
    assert model.training and not model.features[1].training and model.features[4].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "no running stats updated"
    check_model_fits(LinearFirst(), torch.rand(1, 1, 8, 8), 4, "tests.test_user_data:LinearFirst")


@pytest.mark.parametrize("model,example,classes,expected", [
    (QuickstartCNN(4, in_channels=1, width=8), (1, 3, 8, 8), 4,
     ("data.name: the data has 3 channels but the model's first layer (features.0) expects 1 (change data.name / "
      "model.kwargs.in_channels)")),
    (QuickstartCNN(4, in_channels=3, width=8), (1, 1, 8, 8), 4, "the data has 1 channel but"),
    (LinearFirst(in_features=192), (1, 1, 8, 8), 4,
     "the data has 1x8x8 images (64 values) but the model's first layer (stem) expects 192 inputs"),
    (QuickstartCNN(100, in_channels=3, width=8), (1, 3, 8, 8), 10,
     "model.name: the data has 10 classes but the model outputs 100"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)), (1, 3, 8, 8), 10,
     "model.name: the model's forward fails on one image of the data (shape [1, 3, 8, 8]): RuntimeError"),
])
def test_a_model_that_does_not_fit_the_data_is_one_line_naming_both_sides(model, example, classes, expected):
    with pytest.raises(AutopruneError) as err:
        check_model_fits(model, torch.rand(*example), classes, "quickstart_cnn")
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------ through the CLI
def _tiny(write_study, data: dict, model: dict | None = None, **more):
    model = model or {"name": "quickstart_cnn", "kwargs": {"width": 8, "in_channels": 3},
                      "base_training": {"epochs": 2, "batch_size": 32}}
    return write_study({"data": data, "model": model, **more})


def test_search_on_a_user_data_set_end_to_end(write_study, tmp_path, one_intra_op_thread):
    path = _tiny(write_study, {"name": "tests.user_data:rgb", "kwargs": {"n_train": 80}, "train_subset": 40},
                 budget={"n_trials": 2}, recovery={"bn_recalibration_batches": 1, "steps": 2, "batch_size": 16})
    result = CliRunner().invoke(main, ["search", str(path)])
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.stderr
    status = json.loads(CliRunner().invoke(main, ["status", str(path), "--json"]).stdout)
    assert status["trials"]["COMPLETE"] == 2
    base = json.loads(CliRunner().invoke(main, ["evaluate", str(path), "--base", "--json"]).stdout)
    assert base["data"]["dataset"] == "tests.user_data:rgb" and base["images"] == 16
    assert base["data"]["sizes"]["train"] == 40


def _refused(path) -> str:
    result = CliRunner().invoke(main, ["search", str(path)])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert not (path.parent / "run").exists(), "nothing written"
    return lines[0]


def test_a_channel_mismatch_is_refused_before_anything_is_written(write_study):
    path = _tiny(write_study, {"name": "tests.user_data:rgb"}, {"name": "quickstart_cnn", "kwargs": {"width": 8}})
    line = _refused(path)
    assert f"{path}: data.name: the data has 3 channels but the model's first layer (features.0) expects 1 " \
           "(change data.name / model.kwargs.in_channels)" in line


def test_a_class_count_mismatch_is_refused_before_anything_is_written(write_study):
    line = _refused(_tiny(write_study, {"name": "tests.user_data:rgb"}, {"name": "tests.user_data:hundred_outputs"}))
    assert "model.name: the data has 4 classes but the model outputs 100" in line
    line = _refused(_tiny(write_study, {"name": "tests.user_data:rgb"},
                          {"name": "quickstart_cnn", "num_classes": 10, "kwargs": {"in_channels": 3}}))
    assert "model.num_classes: the data has 4 classes but the model outputs 10 (set model.num_classes: 4" in line


def test_a_factory_that_raises_is_refused_before_anything_is_written(write_study):
    line = _refused(_tiny(write_study, {"name": "tests.user_data:raises"}))
    assert "data.name: data factory 'tests.user_data:raises' failed: RuntimeError: the disk is on fire" in line
