"""User data sets for the ``data.name: "tests.user_data:<factory>"`` tests: tiny random 8x8 images.

Each :class:`Images` records the indices its ``__getitem__`` was called with (``reads``), and every factory call
appends what it returned to :data:`MADE`, so a test can count what autoprune read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

MADE: list = []  # what each factory call returned, in call order


class Images(Dataset):
    """``n`` random ``channels``x8x8 uint8 images; the label of image ``i`` is ``i % classes``.

    The images of each class differ in brightness, so a small CNN learns something in a few steps.
    """

    def __init__(self, n: int, channels: int = 3, classes: int = 4, seed: int = 0, size: int = 8) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % classes
        noise = torch.randint(0, 96, (n, channels, size, size), generator=gen)
        self.x = (noise + (self.y * 160 // max(1, classes - 1)).view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.reads.append(i)
        return self.x[i], int(self.y[i])


def _made(value):
    MADE.append(value)
    return value


def rgb(n_train: int = 120, n_test: int = 40, classes: int = 4, root: str | None = None):
    """3-channel images, returned as a ``(train, test)`` pair (class count from the labels)."""
    return _made((Images(n_train, 3, classes, seed=1), Images(n_test, 3, classes, seed=2)))


@dataclass
class Gray:
    train: Dataset
    test: Dataset
    num_classes: int
    mean: list[float]
    std: list[float]


def gray(n_train: int = 60, n_test: int = 20):
    """1-channel images as a dataclass with num_classes 5 (labels 0-2 only) and the normalisation."""
    return _made(Gray(Images(n_train, 1, 3, seed=3), Images(n_test, 1, 3, seed=4), 5, [0.25], [0.5]))


class Arrays(Dataset):
    """Given arrays as a data set: for comparing a factory's splits with a registered source's."""

    def __init__(self, x: np.ndarray, y: np.ndarray, as_float: bool = False) -> None:
        self.x, self.y, self.as_float = x, y, as_float
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.reads.append(i)
        x = torch.from_numpy(self.x[i])
        return (x.float() / 255 if self.as_float else x), torch.tensor(self.y[i])


def arrays(x_train, y_train, x_test, y_test, as_float: bool = False):
    return _made({"train": Arrays(x_train, y_train, as_float), "test": Arrays(x_test, y_test, as_float),
                  "num_classes": 3, "mean": [0.5], "std": [0.25]})


class PilImages(Dataset):
    def __init__(self, n: int, mode: str) -> None:
        from PIL import Image

        rng = np.random.default_rng(0)
        shape = (8, 8) if mode == "L" else (8, 8, 3)
        self.items = [(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode), i % 2) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def pil(mode: str = "L"):
    """PIL images (grayscale ``L`` or ``RGB``), two classes."""
    return PilImages(10, mode), PilImages(6, mode)


# ------------------------------------------------------------------------------------------------- mistakes
def raises():
    raise RuntimeError("the disk is on fire")


def three_things():
    return Images(4), Images(4), Images(4)


def not_data_sets():
    return 5, 6


def iterable():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(Images(4))

    return Stream(), Images(4)


def unknown_keys():
    return {"train": Images(4), "test": Images(4), "classes": 4}


class Broken(Images):
    """One bad item, at index ``bad``: its read raises, or it is not an (image, label) pair of the right kinds."""

    def __init__(self, n: int, bad: int, kind: str) -> None:
        super().__init__(n)
        self.bad, self.kind = bad, kind

    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        if i != self.bad:
            return x, y
        if self.kind == "raises":
            raise KeyError(f"no file for item {i}")
        return {"image": ("pixels", y), "label": (x, 2.5), "pair": (x, y, "extra"), "shape": (x[0], y),
                "size": (x[:, :4], y), "negative": (x, -1)}[self.kind]


def broken(kind: str = "image", part: str = "train"):
    """Good images but for item 3 of the ``part`` set (see :class:`Broken`)."""
    good, bad = Images(12), Broken(12, 3, kind)
    return (bad, good) if part == "train" else (good, bad)


def floats_out_of_range():
    class Scaled(Images):
        def __getitem__(self, i: int):
            x, y = super().__getitem__(i)
            return x.float(), y  # 0-255 floats: should have been divided by 255

    return Scaled(8), Scaled(8)


# ---------------------------------------------------------------------------------- a model that ignores classes
def hundred_outputs(num_classes: int = 10, in_channels: int = 3):
    """A model factory that ignores ``num_classes`` (always 100 outputs): the class-count refusal."""
    from autoprune.models.factory import QuickstartCNN

    return QuickstartCNN(num_classes=100, in_channels=in_channels, width=8)
