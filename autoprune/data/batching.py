"""What every split does with a batch of images once it is read: augment, normalise, lay out for the device.

A split (:class:`~autoprune.data.splits.Split`, images in memory; :class:`~autoprune.data.streaming.StreamSplit`, images
read from a data set batch by batch) only says how to read raw images (:meth:`Batches.read`, :meth:`Batches.rows`);
the batches themselves are made here, by the same code for both, so the same images give the same batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator

import torch


def device_layout(x: torch.Tensor) -> torch.Tensor:
    """A batch of images in the memory layout its device's models are kept in: channels_last on CUDA."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def crop_flip_params(n: int, pad: int = 4, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets (rows, columns, each in [0, 2*pad]) and horizontal-flip flags for ``n`` images."""
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return oy, ox, flip


def crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Crop each image of a float NCHW batch at (oy, ox) of its zero-padded copy, flipping where ``flip``."""
    n, _, h, w = x.shape
    oy, ox, flip = oy.to(x.device), ox.to(x.device), flip.to(x.device)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return xp[batch, chan, rows, cols]


def random_crop_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop (zero padding ``pad``) and horizontal flip, on a float NCHW batch."""
    return crop_flip(x, *crop_flip_params(x.shape[0], pad, generator), pad=pad)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Raw images (uint8 0-255, or floats already in [0, 1]) as float32 in [0, 1]."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a float NCHW batch, in its device's layout."""
    return device_layout((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))


class Batches(ABC):
    """Batches, preprocessing and examples over a split's raw reads (a subclass gives ``mean``, ``std``,
    ``__len__``, :meth:`read` and :meth:`rows`)."""

    mean: torch.Tensor
    std: torch.Tensor

    @abstractmethod
    def __len__(self) -> int:
        """The number of images in the split."""

    @abstractmethod
    def read(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw images (uint8 or float in [0, 1], NCHW) and labels at positions ``idx``, on the split's device."""

    @abstractmethod
    def rows(self, rows: Iterable[torch.Tensor | slice]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`read` of each batch of positions in ``rows``, in order (a streaming split reads ahead)."""

    def prepare(self, x: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_unit(x)
        if augment:
            x = random_crop_flip(x, generator=generator)
        return normalise(x, self.mean, self.std)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Preprocessed ``(x, y)`` batches, in order or shuffled by ``generator`` (which also draws the crops)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        starts = range(0, stop, batch_size)
        rows = (slice(s, s + batch_size) if order is None else order[s : s + batch_size] for s in starts)
        for x, y in self.rows(rows):
            yield self.prepare(x, augment, generator), y

    def example(self, batch_size: int = 1) -> torch.Tensor:
        return self.prepare(self.read(torch.arange(min(batch_size, len(self))))[0])
