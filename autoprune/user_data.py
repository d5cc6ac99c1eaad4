"""The user's own data set, ``data.name: "package.module:factory"``: the factory is called as
``factory(**data.kwargs)`` (plus ``root=data.root`` when set) and returns map-style train and test data sets
yielding ``(image, label)`` (:data:`RETURNS`); :class:`DatasetSource` reads only the items the splits need.
Everything that can go wrong is one :class:`~autoprune.errors.AutopruneError` naming ``data.name``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset

from autoprune.errors import AutopruneError, first_line


class FactorySettings(Protocol):
    """What calling a data factory reads (a :class:`~autoprune.config.DataConfig` has all of it)."""

    name: str  # "package.module:factory"
    root: str | None
    kwargs: dict[str, Any]


RETURNS = "(train, test), or a dict or dataclass with train, test and optional num_classes, mean, std"


def bad_data(message: str) -> AutopruneError:
    return AutopruneError(message, field="data.name")


def _as_image(value: Any) -> torch.Tensor:
    """An item's image as a CHW tensor (uint8, or float32): a tensor as it is, a PIL image converted."""
    if not isinstance(value, torch.Tensor):
        try:
            from PIL import Image
        except ImportError:  # without Pillow nothing can be a PIL image
            Image = None
        if Image is None or not isinstance(value, Image.Image):
            raise ValueError(f"the image is a {type(value).__name__}; expected a CHW tensor or a PIL image")
        pixels = np.array(value if value.mode in ("L", "RGB") else value.convert("RGB"))
        value = torch.from_numpy(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
    if value.ndim != 3:
        raise ValueError(f"the image has shape {list(value.shape)}; expected CHW (channels, height, width)")
    if value.is_floating_point():
        return value.float()
    if value.dtype != torch.uint8:
        raise ValueError(f"the image is {value.dtype}; expected uint8 (0-255) or float (0-1)")
    return value


def _as_label(value: Any) -> int:
    try:
        label = operator.index(value)  # int, numpy integer, one-element integer tensor; not a float
    except TypeError:
        raise ValueError(f"the label is {value!r}; expected an integer class index") from None
    if label < 0:
        raise ValueError(f"the label is {label}; expected a class index >= 0")
    return label


@dataclass
class DatasetSource:
    """A user's train and test data sets (map-style, yielding ``(image, label)``), read item by item where a
    split needs them (:meth:`take`). ``num_classes`` and ``stats`` are None where the factory gave none."""

    name: str
    train: Any
    test: Any
    num_classes: int | None = None
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    official_test: bool = True
    _like: torch.Tensor | None = field(default=None, init=False, repr=False)  # the first image read: the model
    # every other image must match (shape and dtype)

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train), len(self.test)

    def take(self, part: str, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Read the items at ``idx`` (None: all) of the ``train`` or ``test`` set, each once, into arrays."""
        ds = self.train if part == "train" else self.test
        order = range(len(ds)) if idx is None else [int(i) for i in idx]
        images, labels = [], []
        for i in order:
            image, label = self._item(ds, part, i)
            images.append(image)
            labels.append(label)
        if not images:
            return np.zeros((0, *self._like.shape), self._like.numpy().dtype), np.zeros(0, np.int64)
        x = torch.stack(images)
        if x.is_floating_point() and (x.min() < 0 or x.max() > 1):
            raise bad_data(f"data set {self.name!r}: the {part} images are floats in [{x.min():g}, {x.max():g}]; "
                            "expected floats in [0, 1] or uint8 0-255 (normalisation is data.mean / data.std)")
        return x.numpy(), np.asarray(labels, dtype=np.int64)

    def _item(self, ds: Any, part: str, i: int) -> tuple[torch.Tensor, int]:
        try:
            item = ds[i]
        except Exception as exc:  # noqa: BLE001 - the user's __getitem__: any error is theirs
            raise bad_data(f"data set {self.name!r}: reading {part} item {i} failed: {first_line(exc)}") from None
        try:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"it is a {type(item).__name__}, not an (image, label) pair")
            image, label = _as_image(item[0]), _as_label(item[1])
        except ValueError as exc:
            raise bad_data(f"data set {self.name!r}: {part} item {i}: {exc}") from None
        if self._like is None:
            self._like = image
        elif image.shape != self._like.shape or image.dtype != self._like.dtype:
            raise bad_data(f"data set {self.name!r}: {part} item {i} is a {list(image.shape)} {image.dtype} image "
                            f"but the first image read is {list(self._like.shape)} {self._like.dtype}; every image "
                            "must have one shape and dtype")
        return image, label


def _stats_given(name: str, mean: Any, std: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if mean is None and std is None:
        return None
    try:
        stats = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except TypeError:
        raise bad_data(f"data factory {name!r} returned mean {mean!r} and std {std!r}; expected both or neither, "
                        "each a list of numbers (one per channel)") from None
    if len(stats[0]) != len(stats[1]) or any(s <= 0 for s in stats[1]):
        raise bad_data(f"data factory {name!r} returned mean {list(stats[0])} and std {list(stats[1])}; expected "
                        "one value per channel in each, std > 0")
    return stats


def _unpack(name: str, value: Any) -> DatasetSource:
    """What a data factory returned, as a :class:`DatasetSource` (checked: a wrong shape is one clear error)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        value = {"train": value[0], "test": value[1]}
    if not isinstance(value, Mapping):
        length = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
        raise bad_data(f"data factory {name!r} returned a {type(value).__name__}{length}; expected {RETURNS}")
    unknown = sorted(str(k) for k in value if k not in ("train", "test", "num_classes", "mean", "std"))
    missing = [k for k in ("train", "test") if k not in value]
    if unknown or missing:
        what = f"unknown keys {unknown}" if unknown else f"no {' or '.join(missing)}"
        raise bad_data(f"data factory {name!r} returned a mapping with {what}; expected {RETURNS}")
    for part in ("train", "test"):
        ds = value[part]
        if isinstance(ds, IterableDataset) or not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
            raise bad_data(f"data factory {name!r} returned a {part} set of type {type(ds).__name__}; expected a "
                            "map-style torch.utils.data.Dataset (with __len__ and __getitem__)")
        if len(ds) == 0:
            raise bad_data(f"data factory {name!r} returned an empty {part} set")
    num_classes = value.get("num_classes")
    if num_classes is not None:
        try:
            num_classes = operator.index(num_classes)
        except TypeError:
            num_classes = 0
        if num_classes < 1:
            raise bad_data(f"data factory {name!r} returned num_classes {value['num_classes']!r}; expected a "
                            "positive integer (or none: the largest label + 1)")
    stats = _stats_given(name, value.get("mean"), value.get("std"))
    return DatasetSource(name, value["train"], value["test"], num_classes, stats)


def load_user(factory: Callable[..., Any], cfg: FactorySettings, rng: np.random.Generator) -> DatasetSource:
    """Call a ``package.module:factory`` data set: ``factory(**data.kwargs)``, plus ``root=data.root`` when set."""
    kwargs = dict(cfg.kwargs, **({"root": cfg.root} if cfg.root else {}))
    try:
        returned = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code: any error is theirs
        raise bad_data(f"data factory {cfg.name!r} failed: {first_line(exc)}") from None
    return _unpack(cfg.name, returned)


