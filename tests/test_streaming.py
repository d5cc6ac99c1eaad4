"""Streamed splits (image folders, user data sets): the same batches as the in-memory split of the same images,
whatever the worker count; only the needed items read; worker errors as one line; the recovery stream, the
final retrain's training split and a whole search on a streamed image folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autoprune.cli import main
from autoprune.config import DataConfig
from autoprune.data.splits import Split, join, load_splits
from autoprune.data.streaming import StreamSplit, default_workers
from autoprune.deliver.retrain import full_training_split
from autoprune.errors import AutopruneError
from autoprune.train.teacher_stream import RecoveryStream, sample_stream_indices
from tests import user_data

CLASSES = ("ant", "bee", "cat")


def _write_folder(root, per_class: dict[str, int], seed: int = 0) -> None:
    """Small PNG and JPEG files of odd sizes and modes (RGB, grey, RGBA) under root/<split>/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(14, 30, 2)
                pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8) // (c + 1)
                mode = ("RGB", "L", "RGBA")[i % 3]
                img = Image.fromarray(pixels[..., :3]).convert(mode) if mode != "RGBA" else Image.fromarray(pixels)
                img.save(d / f"{i:03d}.{'jpg' if mode != 'RGBA' and i % 2 else 'png'}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    _write_folder(root, {"train": 80, "val": 20})  # 300 files
    return root


def _cfg(folder, **kw) -> DataConfig:
    """The folder streamed (memory_mb 0: a small folder would otherwise be decoded once and held)."""
    return DataConfig(name="imagefolder", root=str(folder), image_size=16, **{"memory_mb": 0, **kw})


def _decoded(split: StreamSplit) -> Split:
    """The split decoded whole into memory, as autoprune did before streaming (one image at a time)."""
    x = torch.stack([split.reader(int(i)) for i in split.idx])
    return Split(x, split.y, split.mean, split.std)


def _all(batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in batches]


def _same(a, b) -> None:
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --------------------------------------------------------------------------------------------- image folders
def test_an_image_folder_is_streamed_and_decodes_as_before(folder):
    s = load_splits(_cfg(folder, num_workers=0))
    assert isinstance(s.train, StreamSplit) and isinstance(s.test_full, StreamSplit)
    assert len(s.train) + len(s.val) == 240 and len(s.test_full) == 60 and s.num_classes == 3
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(18), transforms.CenterCrop(16), transforms.PILToTensor()])
    ds = datasets.ImageFolder(str(folder / "train"), transform=tf)
    for i in (0, 1, 2, 5):  # RGB, grey (repeated to 3 channels), RGBA (alpha dropped)
        pos = int((s.train.idx == i).nonzero()[0]) if (s.train.idx == i).any() else None
        split = s.train if pos is not None else s.val
        pos = pos if pos is not None else int((s.val.idx == i).nonzero()[0])
        x, y = split.read(torch.tensor([pos]))
        want = ds[i][0]
        assert x.dtype == torch.uint8 and x.shape == (1, 3, 16, 16)
        assert torch.equal(x[0], want.expand(3, -1, -1) if want.shape[0] == 1 else want[:3]) and int(y) == ds.targets[i]


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_in_memory_batches_of_the_same_images_bit_for_bit(folder, workers):
    s = load_splits(_cfg(folder, num_workers=workers, train_subset=100))
    memory = _decoded(s.train)
    for kw in ({}, {"shuffle": True, "augment": True, "drop_last": True}):
        streamed = _all(s.train.batches(32, generator=torch.Generator().manual_seed(5), **kw))
        held = _all(memory.batches(32, generator=torch.Generator().manual_seed(5), **kw))
        _same(streamed, held)
    assert torch.equal(s.val.example(3), _decoded(s.val).example(3))


def test_the_worker_count_changes_no_batch_and_no_fingerprint(folder):
    a, b = (load_splits(_cfg(folder, num_workers=w, train_subset=50)) for w in (0, 2))
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    _same(_all(a.train.batches(16, shuffle=True, augment=True, generator=gen())),
          _all(b.train.batches(16, shuffle=True, augment=True, generator=gen())))
    assert _cfg(folder, num_workers=0).model_dump() == _cfg(folder, num_workers=3).model_dump() == _cfg(folder).model_dump()
    assert [default_workers(c) for c in (1, 2, 3, 64)] == [0, 1, 2, 4]


def test_an_unreadable_image_in_a_worker_is_one_line_naming_the_file(tmp_path):
    _write_folder(tmp_path, {"train": 10, "val": 4})
    (tmp_path / "train" / "cat" / "zz-broken.png").write_bytes(b"not a png at all")
    s = load_splits(_cfg(tmp_path, num_workers=2, val_fraction=0.1))  # loading decodes one image only
    with pytest.raises(AutopruneError) as err:
        for _ in s.train.batches(4):
            pass
    message = str(err.value)
    assert message.startswith("data.root: cannot read image ") and "zz-broken.png" in message, message
    assert "\n" not in message and "Traceback" not in message and "worker" not in message.lower()


# ------------------------------------------------------------------------------------------- user data sets
def test_a_user_data_set_is_streamed_and_batches_read_only_the_training_subset():
    s = load_splits(DataConfig(name="tests.user_data:rgb", train_subset=20, seed=2, num_workers=0, memory_mb=0))
    train_set, _ = user_data.MADE[-1]
    assert isinstance(s.train, StreamSplit) and len(s.train) == 20
    loaded = list(train_set.reads)
    train_set.reads.clear()
    for _ in s.train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)):
        pass
    assert sorted(train_set.reads) == sorted(s.train.idx.tolist()), "one epoch reads the subset, each item once"
    assert set(loaded) == set(s.train.idx.tolist()) | set(s.val.idx.tolist()), "loading read the needed items"
    images = torch.stack([train_set.x[i] for i in s.train.idx.tolist()])
    assert torch.equal(s.train.read(torch.arange(20))[0], images)


# ------------------------------------------------------------------------------- recovery stream and retrain
def test_the_recovery_stream_over_a_streamed_split_equals_the_one_over_the_same_images_in_memory(folder):
    s = load_splits(_cfg(folder, num_workers=2, train_subset=64))
    memory = _decoded(s.train)
    stream = RecoveryStream(*sample_stream_indices(len(s.train), 5, 16, True, seed=3), torch.randn(5, 16, 3),
                            augment=True)
    streamed = [b for _, b in zip(range(7), stream.batches(s.train, start=2))]  # cycles past the end
    held = [b for _, b in zip(range(7), stream.batches(memory, start=2))]
    for a, b in zip(streamed, held):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert torch.equal(streamed[3][2], stream.logits[0].float()), "step 5 is step 0 again"
    x, y = stream.images(s.train, 4)
    assert torch.equal(x, held[2][0]) and torch.equal(y, held[2][1])


def test_the_final_retrain_trains_on_train_plus_validation_of_a_streamed_split(folder):
    s = load_splits(_cfg(folder, num_workers=0))
    ctx = SimpleNamespace(data=s, study=SimpleNamespace(config=SimpleNamespace(data=_cfg(folder))))
    full = full_training_split(ctx)
    assert isinstance(full, StreamSplit) and len(full) == len(s.train) + len(s.val) == 240
    assert sorted(full.idx.tolist()) == list(range(240))
    want = join(_decoded(s.train), _decoded(s.val))
    _same(_all(full.batches(64)), _all(want.batches(64)))
    with pytest.raises(ValueError, match="same data set"):
        join(s.train, s.test)


# ------------------------------------------------------------------------------------------------ end to end
def test_search_on_a_streamed_image_folder_end_to_end(write_study, folder, one_intra_op_thread):
    path = write_study({
        "data": {"name": "imagefolder", "root": str(folder), "image_size": 16, "num_workers": 0, "train_subset": 64,
                 "memory_mb": 0},
        "model": {"name": "quickstart_cnn", "kwargs": {"width": 8, "in_channels": 3},
                  "base_training": {"epochs": 1, "batch_size": 32}},
        "budget": {"n_trials": 2},
        "recovery": {"bn_recalibration_batches": 1, "steps": 2, "batch_size": 16}})
    result = CliRunner().invoke(main, ["search", str(path)])
    assert result.exit_code == 0, result.output
    status = json.loads(CliRunner().invoke(main, ["status", str(path), "--json"]).stdout)
    assert status["trials"]["COMPLETE"] == 2
    base = json.loads(CliRunner().invoke(main, ["evaluate", str(path), "--base", "--json"]).stdout)
    assert base["data"]["dataset"] == "imagefolder" and base["data"]["sizes"]["train"] == 64


def test_streamed_splits_that_fit_in_memory_mb_are_decoded_once_and_held_giving_the_same_batches(folder):
    from autoprune.data.splits import held

    streamed = load_splits(_cfg(folder, num_workers=2, train_subset=64))
    kept = load_splits(_cfg(folder, num_workers=2, train_subset=64, memory_mb=1))  # 300 16x16 images: 0.2 MB
    assert all(isinstance(kept.get(n), Split) for n in ("train", "val", "test", "test-full"))
    for name in ("train", "val", "test", "test-full"):
        a, b = streamed.get(name), kept.get(name)
        assert torch.equal(b.x, held(a).x) and torch.equal(a.y, b.y)
        gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        for (xa, ya), (xb, yb) in zip(a.batches(16, shuffle=True, augment=True, generator=gen()),
                                      b.batches(16, shuffle=True, augment=True, generator=gen())):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the budget counts every streamed split: 0 MB keeps all of them streamed
    assert isinstance(load_splits(_cfg(folder, memory_mb=0)).train, StreamSplit)
    assert _cfg(folder, memory_mb=5).model_dump() == _cfg(folder).model_dump()  # in no fingerprint
