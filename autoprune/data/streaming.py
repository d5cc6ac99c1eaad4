"""Streaming splits: images read from a map-style data set batch by batch, never held whole in memory.

A :class:`StreamSplit` is an index array into a data set (an ImageFolder, a user's ``package.module:factory``
set) plus the labels, which are small. Its batches are read through a ``torch.utils.data.DataLoader`` whose
``data.num_workers`` worker processes only decode and stack raw images (uint8 or float NCHW); augmentation and
normalisation run in the main process through :class:`~autoprune.data.batching.Batches`, the same code as the
in-memory :class:`~autoprune.data.splits.Split`, so the same images give the same batches in both.

An :class:`~autoprune.errors.AutopruneError` raised while reading an item (in a worker or not) reaches the caller
as that one error, not as a worker's traceback.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from autoprune.data.batching import Batches
from autoprune.errors import AutopruneError

Reader = Callable[[int], torch.Tensor]  # data set index -> raw CHW image (raises AutopruneError)


def default_workers(cores: int | None = None) -> int:
    """Loader worker processes when ``data.num_workers`` is unset: one core is left to the training process.

    >>> [default_workers(c) for c in (1, 2, 4, 16)]
    [0, 1, 3, 4]
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


@dataclass
class Failure:
    """An AutopruneError raised in a loader worker, carried back to the main process as data."""

    message: str
    source: str | None
    field: str | None

    @classmethod
    def of(cls, err: AutopruneError) -> Failure:
        return cls(err.message, err.source, err.field)

    def raise_(self) -> None:
        raise AutopruneError(self.message, source=self.source, field=self.field)


class _Fetch(Dataset):
    """``fetch(indices)`` for each batch of data set indices the sampler hands out; a Failure instead of raising."""

    def __init__(self, fetch: Callable[[list[int]], Any]) -> None:
        self.fetch = fetch

    def __getitem__(self, indices: list[int]) -> Any:
        try:
            return self.fetch(indices)
        except AutopruneError as err:
            return Failure.of(err)


def _as_fetched(item: Any) -> Any:
    return item  # no conversion: what a fetch returns reaches the caller as it is


def load_batches(fetch: Callable[[list[int]], Any], batches: Iterable[list[int]], num_workers: int,
                 pin_memory: bool = False) -> Iterator[Any]:
    """``fetch(indices)`` of each batch in ``batches``, in order, in ``num_workers`` worker processes (0: here)."""
    loader = DataLoader(_Fetch(fetch), batch_size=None, sampler=batches, num_workers=num_workers,
                        collate_fn=_as_fetched, pin_memory=pin_memory)
    it = iter(loader)
    try:
        for item in it:
            if isinstance(item, Failure):
                item.raise_()
            yield item
    finally:
        del it  # stops the workers when the caller stops early


@dataclass
class _Stack:
    """Read and stack images (a picklable callable: workers may be spawned)."""

    reader: Reader

    def __call__(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([self.reader(i) for i in indices])


@dataclass
class StreamSplit(Batches):
    """Images of a map-style data set at ``idx``, read batch by batch; labels ``y`` held in memory.

    Example:
        >>> s = StreamSplit(lambda i: torch.full((1, 2, 2), i, dtype=torch.uint8), torch.tensor([5, 7]),
        ...                 torch.tensor([0, 1]), torch.zeros(1), torch.ones(1), (1, 2, 2))
        >>> s.read(torch.tensor([1]))[0].flatten().tolist()
        [7, 7, 7, 7]
    """

    reader: Reader
    idx: torch.Tensor  # long, into the data set (on the CPU)
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    shape: tuple[int, ...]  # one image's (channels, height, width)
    num_workers: int = 0
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def to(self, device: torch.device | str) -> StreamSplit:
        return dataclasses.replace(self, y=self.y.to(device), mean=self.mean.to(device), std=self.std.to(device),
                                   device=torch.device(device))

    def subset(self, idx: Any) -> StreamSplit:
        idx = torch.as_tensor(idx).cpu().long()
        return dataclasses.replace(self, idx=self.idx[idx], y=self.y[idx.to(self.y.device)])

    def _indices(self, rows: torch.Tensor | slice) -> tuple[list[int], torch.Tensor]:
        pos = torch.arange(len(self))[rows] if isinstance(rows, slice) else torch.as_tensor(rows).cpu().long()
        return self.idx[pos].tolist(), pos

    def read(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(idx) == 0:
            return torch.zeros((0, *self.shape), dtype=torch.uint8, device=self.device), self.y[:0]
        (batch,) = self.rows([idx], num_workers=0)
        return batch

    def rows(self, rows: Iterable[torch.Tensor | slice], num_workers: int | None = None
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Read ahead: the workers decode the next batches while the caller trains on this one."""
        positions: list[torch.Tensor] = []  # the main process's record of what each batch holds, in order

        def indices() -> Iterator[list[int]]:
            for r in rows:
                ids, pos = self._indices(r)
                positions.append(pos)
                yield ids

        workers = self.num_workers if num_workers is None else num_workers
        cuda = self.device.type == "cuda"
        for x in load_batches(_Stack(self.reader), indices(), workers, pin_memory=cuda):
            pos = positions.pop(0)
            yield x.to(self.device, non_blocking=cuda), self.y[pos.to(self.y.device)]
