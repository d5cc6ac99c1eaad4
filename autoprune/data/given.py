"""Data handed over from Python (``autoprune.search(train_data=..., val_data=...)``): a DataLoader or a map-style
Dataset as a split.

An :class:`ItemSplit` reads the user's items batch by batch, through their collate function and a batch adapter
(:func:`split_batch`, or the user's own) that takes what a batch is (a pair, a dict) to ``(inputs, targets)``. The
user's transforms are the preprocessing: autoprune neither normalises nor augments these images (its mean is 0,
its std 1), and a random transform draws anew on every read. Shuffling is autoprune's own (seeded), so the search
is reproducible whatever the loader's sampler; the loader gives its data set, collate function and workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_collate

from autoprune.data.batching import Batches
from autoprune.data.splits import DataSplits
from autoprune.data.streaming import load_batches
from autoprune.errors import AutopruneError, first_line

BatchAdapter = Callable[[Any], tuple[torch.Tensor, Any]]  # what a batch is -> (model inputs, targets)

INPUT_KEYS = ("image", "images", "input", "inputs", "x", "pixel_values")
TARGET_KEYS = ("label", "labels", "target", "targets", "mask", "masks", "y")


def split_batch(batch: Any) -> tuple[torch.Tensor, Any]:
    """The default batch adapter: ``(inputs, targets, ...)`` as it is; a dict by its usual keys.

    Example:
        >>> x, y = split_batch({"image": torch.zeros(2, 3, 4, 4), "mask": torch.zeros(2, 4, 4)})
        >>> tuple(x.shape), tuple(y.shape)
        ((2, 3, 4, 4), (2, 4, 4))
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if x is not None and y is not None:
            return x, y
        raise ValueError(f"a batch is a dict with keys {sorted(map(str, batch))}; expected one of {list(INPUT_KEYS)} "
                         f"for the inputs and one of {list(TARGET_KEYS)} for the targets (or pass batch=a function "
                         "of a batch returning (inputs, targets))")
    raise ValueError(f"a batch is a {type(batch).__name__}; expected (inputs, targets) or a dict (or pass batch=a "
                     "function of a batch returning (inputs, targets))")


@dataclass(eq=False)
class _Fetch:
    """Read, collate and adapt the items at some indices (a picklable callable: loader workers may be spawned)."""

    dataset: Any
    collate: Callable[[list[Any]], Any]
    adapter: BatchAdapter
    name: str

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, Any]:
        try:
            batch = self.collate([self.dataset[i] for i in indices])
        except Exception as exc:  # noqa: BLE001 - the user's data set and collate function: any error is theirs
            raise AutopruneError(f"reading items {indices[:3]}... failed: {first_line(exc)}",
                                 field=self.name) from None
        try:
            x, y = self.adapter(batch)
        except Exception as exc:  # noqa: BLE001 - the user's batch adapter
            raise AutopruneError(f"the batch adapter failed: {first_line(exc)}", field=self.name) from None
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not (x.is_floating_point() or x.dtype == torch.uint8):
            what = f"a {list(x.shape)} {x.dtype} tensor" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
            raise AutopruneError(f"a batch's inputs are {what}; expected a float NCHW image tensor",
                                 field=self.name)
        return x, y


def _to(y: Any, device: torch.device) -> Any:
    return y.to(device) if isinstance(y, torch.Tensor) else y


@dataclass
class ItemSplit(Batches):
    """Items ``idx`` of a user's map-style data set, read batch by batch as ``(inputs, targets)``."""

    fetch: _Fetch
    idx: torch.Tensor  # long, into the data set
    shape: tuple[int, ...]  # one image's (channels, height, width)
    mean: torch.Tensor  # zeros: the user's transforms normalise
    std: torch.Tensor  # ones
    num_workers: int = 0
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def to(self, device: torch.device | str) -> ItemSplit:
        return dataclasses.replace(self, mean=self.mean.to(device), std=self.std.to(device), device=torch.device(device))

    def subset(self, idx: Any) -> ItemSplit:
        return dataclasses.replace(self, idx=self.idx[torch.as_tensor(idx).cpu().long()])

    def read(self, idx: torch.Tensor) -> tuple[torch.Tensor, Any]:
        (batch,) = self.rows([idx], num_workers=0)
        return batch

    def rows(self, rows: Iterable[torch.Tensor | slice], num_workers: int | None = None) -> Iterator[tuple[torch.Tensor, Any]]:
        def indices() -> Iterator[list[int]]:
            for r in rows:
                pos = torch.arange(len(self))[r] if isinstance(r, slice) else torch.as_tensor(r).cpu().long()
                yield self.idx[pos].tolist()

        workers = self.num_workers if num_workers is None else num_workers
        for x, y in load_batches(self.fetch, indices(), workers):
            yield x.to(self.device), _to(y, self.device)


def _parts(data: Any, name: str) -> tuple[Any, Callable[[list[Any]], Any], int]:
    """(map-style data set, collate function, loader workers) of a DataLoader or a Dataset."""
    if isinstance(data, DataLoader):
        dataset, collate, workers = data.dataset, data.collate_fn, data.num_workers
    else:
        dataset, collate, workers = data, default_collate, 0
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise AutopruneError(f"a {type(dataset).__name__}; expected a DataLoader over a map-style Dataset, or "
                             "a map-style Dataset (with __len__ and __getitem__: the search draws seeded batches)",
                             field=name)
    if len(dataset) == 0:
        raise AutopruneError("an empty data set", field=name)
    return dataset, collate, workers


def item_split(data: Any, name: str, adapter: BatchAdapter | None = None) -> ItemSplit:
    """``data`` (a DataLoader or a map-style Dataset) as a split; one batch is read now, so a data set whose items
    cannot be read or batched is one error naming ``name`` before anything runs."""
    dataset, collate, workers = _parts(data, name)
    fetch = _Fetch(dataset, collate, adapter or split_batch, name)
    x, _ = fetch(list(range(min(2, len(dataset)))))
    shape = tuple(x.shape[1:])
    return ItemSplit(fetch, torch.arange(len(dataset)), shape, torch.zeros(shape[0]), torch.ones(shape[0]), workers)


def given_splits(train: Any, val: Any, test: Any | None, num_classes: int, adapter: BatchAdapter | None = None
                 ) -> DataSplits:
    """The splits of a search from Python: ``train_data`` recovers the candidates, ``val_data`` scores them, and
    ``test_data`` (default: ``val_data``, said so in the info) is what a final evaluation reports."""
    splits = {name: item_split(d, f"{name}_data", adapter) for name, d in (("train", train), ("val", val))}
    splits["test"] = item_split(test, "test_data", adapter) if test is not None else splits["val"]
    sizes = {name: len(s) for name, s in splits.items()}
    note = ("validation and test given" if test is not None
            else "validation given; no test_data, so test figures are on the validation data")
    info = {"dataset": "given", "seed": None, "sizes": {**sizes, "test_full": sizes["test"]},
            "test_is_official": test is not None, "note": note}
    return DataSplits(splits["train"], splits["val"], splits["test"], splits["test"], num_classes, info)
