"""The user's own data set, ``data.name: "package.module:factory"``: the factory is called as
``factory(**data.kwargs)`` (plus ``root=data.root`` when set) and returns map-style train and test data sets
yielding ``(image, label)`` (:data:`RETURNS`); :class:`DatasetSource` reads only the items the splits need.
Everything that can go wrong is one :class:`~autoprune.errors.AutopruneError` naming ``data.name``.

The splits are streamed (:class:`~autoprune.data.streaming.StreamSplit`). Loading reads each item a split needs once,
in the loader's workers, keeping only its label and its share of the channel statistics: labels have no cheaper
source a map-style data set is bound to offer, and this one pass also checks every item (pair, image, label,
shape, float range), so a broken item is a clear error before the search, not in the middle of it.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset

from autoprune.data.streaming import Failure, StreamSplit, load_batches
from autoprune.errors import AutopruneError, first_line

SCAN_BATCH = 64  # items per loader batch of the loading pass


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


Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class DatasetSource:
    """A user's train and test data sets (map-style, yielding ``(image, label)``), streamed where a split needs
    them (:meth:`split`). ``num_classes`` and ``stats`` are None where the factory gave none."""

    name: str
    train: Any
    test: Any
    num_classes: int | None = None
    stats: Stats | None = None
    official_test: bool = True
    num_workers: int = 0
    _like: tuple[tuple[int, ...], str] | None = field(default=None, init=False, repr=False)  # the first image
    # read (shape, dtype): every other image must match it

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train), len(self.test)

    def split(self, part: str, idx: np.ndarray | None) -> StreamSplit:
        """The items at ``idx`` (None: all) of the ``train`` or ``test`` set, each read once here (the labels and
        checks) and later batch by batch; normalised by their own channel statistics until the study sets its."""
        ds = self.train if part == "train" else self.test
        rows = list(range(len(ds))) if idx is None else [int(i) for i in idx]
        labels, (mean, std) = self._scan(part, rows)
        shape = self._like[0] if self._like else (0, 0, 0)
        return StreamSplit(_ItemReader(self, part), torch.tensor(rows, dtype=torch.long), labels,
                           torch.tensor(mean), torch.tensor(std), shape, self.num_workers)

    def image_stats(self, split: StreamSplit) -> Stats:
        """The channel statistics of a split's images (computed when it was read: see :meth:`split`)."""
        return tuple(split.mean.tolist()), tuple(split.std.tolist())

    def _scan(self, part: str, rows: list[int]) -> tuple[torch.Tensor, Stats]:
        batches = [rows[s : s + SCAN_BATCH] for s in range(0, len(rows), SCAN_BATCH)]
        labels: list[int] = []
        total = squares = 0.0
        lo, hi, pixels = math.inf, -math.inf, 0
        for records, failure in load_batches(_Scan(self, part), batches, self.num_workers):
            for i, label, shape, dtype, sums, sq, mn, mx in records:
                self._check_like(part, i, shape, dtype)
                labels.append(label)
                total, squares, pixels = total + sums, squares + sq, pixels + shape[1] * shape[2]
                lo, hi = min(lo, mn), max(hi, mx)
            if failure is not None:
                failure.raise_()
        if self._like is not None and self._like[1] != str(torch.uint8) and labels and (lo < 0 or hi > 1):
            raise bad_data(f"data set {self.name!r}: the {part} images are floats in [{lo:g}, {hi:g}]; "
                            "expected floats in [0, 1] or uint8 0-255 (normalisation is data.mean / data.std)")
        return torch.tensor(labels, dtype=torch.long), _mean_std(total, squares, pixels, self._like)

    def _check_like(self, part: str, i: int, shape: tuple[int, ...], dtype: str) -> None:
        shape = tuple(shape)
        if self._like is None:
            self._like = (shape, dtype)
        elif (shape, dtype) != self._like:
            raise bad_data(f"data set {self.name!r}: {part} item {i} is a {list(shape)} {dtype} image but the first "
                            f"image read is {list(self._like[0])} {self._like[1]}; every image must have one shape "
                            "and dtype")

    def _item(self, ds: Any, part: str, i: int) -> tuple[torch.Tensor, int]:
        try:
            item = ds[i]
        except Exception as exc:  # noqa: BLE001 - the user's __getitem__: any error is theirs
            raise bad_data(f"data set {self.name!r}: reading {part} item {i} failed: {first_line(exc)}") from None
        try:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"it is a {type(item).__name__}, not an (image, label) pair")
            return _as_image(item[0]), _as_label(item[1])
        except ValueError as exc:
            raise bad_data(f"data set {self.name!r}: {part} item {i}: {exc}") from None


def _mean_std(total: Any, squares: Any, pixels: int, like: tuple[tuple[int, ...], str] | None) -> Stats:
    """Per-channel mean and std from sums over ``pixels`` pixels per channel; a constant channel gets std 1."""
    channels = like[0][0] if like else 0
    if pixels == 0:
        return (0.0,) * channels, (1.0,) * channels
    mean = total / pixels
    std = (squares / pixels - mean**2).clamp(min=0).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) if s > 1e-6 else 1.0 for s in std)


@dataclass(eq=False)
class _Scan:
    """The loading pass over a batch of items, in a loader worker: per item its label, shape, dtype, channel sums
    (of the image in [0, 1]), squared sums, min and max; stops at the first item that fails."""

    source: DatasetSource
    part: str

    def __call__(self, indices: list[int]) -> tuple[list[tuple], Failure | None]:
        ds = self.source.train if self.part == "train" else self.source.test
        records = []
        for i in indices:
            try:
                image, label = self.source._item(ds, self.part, i)
            except AutopruneError as err:
                return records, Failure.of(err)
            x = image.double() / (255.0 if image.dtype == torch.uint8 else 1.0)
            records.append((i, label, tuple(image.shape), str(image.dtype), x.sum((1, 2)), (x * x).sum((1, 2)),
                            float(image.min()), float(image.max())))
        return records, None


@dataclass(eq=False)
class _ItemReader:
    """Image ``i`` of one part of a user's data set (a streamed split's reader)."""

    source: DatasetSource
    part: str

    def __call__(self, i: int) -> torch.Tensor:
        return self.source._item(self.source.train if self.part == "train" else self.source.test, self.part, i)[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ItemReader) and other.source is self.source and other.part == self.part

    __hash__ = object.__hash__


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


def load_user(factory: Callable[..., Any], cfg: FactorySettings, rng: np.random.Generator,
              num_workers: int = 0) -> DatasetSource:
    """Call a ``package.module:factory`` data set: ``factory(**data.kwargs)``, plus ``root=data.root`` when set;
    its splits are read through ``num_workers`` loader worker processes."""
    kwargs = dict(cfg.kwargs, **({"root": cfg.root} if cfg.root else {}))
    try:
        returned = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code: any error is theirs
        raise bad_data(f"data factory {cfg.name!r} failed: {first_line(exc)}") from None
    return dataclasses.replace(_unpack(cfg.name, returned), num_workers=num_workers)


