from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.config import DataConfig
from autoprune.data.splits import load_splits, random_crop_flip
from autoprune.errors import AutopruneError
from tests.conftest import CIFAR, need_shared


def _rows(split) -> set[bytes]:
    return {split.x[i].numpy().tobytes() for i in range(len(split))}


def test_digits_splits_are_seeded_and_disjoint():
    a = load_splits(DataConfig(name="digits", seed=3))
    b = load_splits(DataConfig(name="digits", seed=3))
    c = load_splits(DataConfig(name="digits", seed=4))
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.val.x, b.val.x)
    assert not torch.equal(a.val.x, c.val.x)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    tr, va, te = _rows(a.train), _rows(a.val), _rows(a.test)
    # digits holds a handful of duplicate images; splits are disjoint up to those
    assert len(va & te) <= 3 and len(tr & va) <= 3
    assert a.info["val_source"] == "train" and a.info["test_is_official"] is False


def test_cifar_validation_from_test_split_is_disjoint_from_kept_half():
    need_shared(CIFAR / "train.npz", CIFAR / "test.npz")
    s = load_splits(DataConfig(name="cifar10", root=str(CIFAR), val_source="test", val_fraction=0.5, train_subset=100))
    assert len(s.val) == 5000 and len(s.test) == 5000 and len(s.test_full) == 10000 and len(s.train) == 100
    assert not (_rows(s.val) & _rows(s.test))
    assert s.info["val_source"] == "test" and "test split" in s.info["note"]
    x = s.val.example(2)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32


def test_image_folder_loads_train_and_val(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    s = load_splits(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, val_fraction=0.5))
    assert s.num_classes == 2
    assert len(s.train) + len(s.val) == 6 and len(s.test_full) == 4
    x = s.train.read(torch.arange(len(s.train)))[0]  # streamed: read on demand
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.uint8


def test_image_folder_without_val_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(AutopruneError, match="train/ and val/"):
        load_splits(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_random_crop_flip_keeps_shape_and_content_statistics():
    x = torch.rand(16, 3, 8, 8)
    y = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert not torch.equal(x, y)
    # with pad 0 the only change is a horizontal flip of some images
    z = random_crop_flip(x, pad=0, generator=torch.Generator().manual_seed(0))
    for i in range(16):
        assert torch.equal(z[i], x[i]) or torch.equal(z[i], x[i].flip(-1))


def test_data_sets_are_looked_up_in_the_registry(monkeypatch):
    from autoprune.data.splits import DATASETS, Source

    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "imagefolder"]
    x = np.zeros((10, 1, 4, 4), dtype=np.uint8)
    y = np.arange(10, dtype=np.int64) % 2

    def tiny(cfg, rng):
        return Source(x, y, x[:4], y[:4], 2, ((0.5,), (0.25,)))

    monkeypatch.setitem(DATASETS._entries, "tiny", tiny)
    s = load_splits(DataConfig(name="tiny", val_fraction=0.2))
    assert s.num_classes == 2 and len(s.val) == 2 and len(s.train) == 8 and len(s.test_full) == 4
    assert s.info["dataset"] == "tiny" and s.info["test_is_official"] is True
    assert s.train.mean.tolist() == [0.5]


def test_a_data_set_registered_twice_is_an_error():
    from autoprune.data.splits import DATASETS

    with pytest.raises(ValueError, match="digits"):
        DATASETS.register("digits", lambda cfg, rng: None)


def test_a_failed_cifar_download_with_an_empty_message_is_a_one_line_error(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")

    def offline(*args, **kwargs):
        raise OSError()

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(AutopruneError) as err:
        load_splits(DataConfig(name="cifar10", root=str(tmp_path)))
    assert str(err.value).endswith("download failed: OSError)")
    assert err.value.field == "data.root" and "\n" not in str(err.value)


def test_the_data_module_examples_hold():
    import doctest

    from autoprune.data import splits as data
    from autoprune.models import fit_check as fitcheck

    assert doctest.testmod(data).failed == 0 and doctest.testmod(fitcheck).failed == 0


def test_a_split_kind_must_give_its_length_reads_and_rows() -> None:
    from autoprune.data.batching import Batches

    class OnlyReads(Batches):
        def __len__(self) -> int:
            return 0

        def read(self, idx):
            return idx, idx

    with pytest.raises(TypeError, match="rows"):
        OnlyReads()
