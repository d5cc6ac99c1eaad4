"""The recovery stream: a fixed, seeded sequence of fine-tune batches and the teacher's logits on them.

The teacher (the unpruned base model) never changes during a study, so its logits on the fine-tune batches are
computed once per study and reused by every trial: a distillation step then costs one student forward and
backward, not a teacher forward besides. To make that possible every trial fine-tunes on the same stream of
batches — the same images in the same order with the same crops and flips — which also makes trials differ only
in what they prune (common random numbers: their accuracies compare with less noise).

A stream stores indices and augmentation parameters, not images (a few MB for thousands of steps), and the
teacher's logits in float16. It is cached in the study's folder with a checksum, keyed by everything it depends on
(the base weights included); a cache that fails its checksum is recomputed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from autoprune.data.batching import crop_flip, crop_flip_params, normalise, to_unit
from autoprune.data.splits import Images
from autoprune.files import checksum_ok, save_checksummed

FORMAT = "autoprune-recovery-stream-1"


@dataclass
class RecoveryStream:
    """``steps`` batches of ``batch_size`` training images: indices, augmentation, and the teacher's logits."""

    idx: torch.Tensor  # [steps, batch] long
    oy: torch.Tensor  # [steps, batch] uint8 crop row offsets (augment only)
    ox: torch.Tensor  # [steps, batch] uint8 crop column offsets
    flip: torch.Tensor  # [steps, batch] bool
    logits: torch.Tensor  # [steps, batch, classes] float16: the teacher on exactly these images
    augment: bool

    @property
    def steps(self) -> int:
        return int(self.idx.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.idx.shape[1])

    def images(self, split: Images, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The preprocessed (and augmented) images and labels of batch ``step``, on the split's device."""
        return self._prepare(split, step, *split.read(self.idx[step]))

    def _prepare(self, split: Images, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_unit(x)
        if self.augment:
            x = crop_flip(x, self.oy[step].long(), self.ox[step].long(), self.flip[step])
        return normalise(x, split.mean, split.std), y

    def read(self, split: Images, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(step, x, y)`` from batch ``start`` on, cycling (a streamed split reads the next batches ahead)."""
        order: list[int] = []  # the steps handed to the reader, in order

        def rows() -> Iterator[torch.Tensor]:
            for step in itertools.count(start):
                order.append(step % self.steps)
                yield self.idx[step % self.steps]

        for x, y in split.rows(rows()):
            step = order.pop(0)
            yield (step, *self._prepare(split, step, x, y))

    def batches(self, split: Images, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(x, y, teacher_logits)`` from batch ``start`` on, cycling when the stream runs out."""
        logits = self.logits.to(split.mean.device)  # once, not a host-to-device copy every step
        for step, x, y in self.read(split, start):
            yield x, y, logits[step].float()

    def to_dict(self) -> dict:
        return {"format": FORMAT, "idx": self.idx, "oy": self.oy, "ox": self.ox, "flip": self.flip,
                "logits": self.logits, "augment": self.augment}


def sample_stream_indices(n: int, steps: int, batch_size: int, augment: bool, seed: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Epoch-wise shuffled indices (every image once per epoch, the last partial batch dropped) and augmentation."""
    if n < batch_size:
        raise ValueError(f"the training split has {n} images, fewer than one batch of {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    rows = []
    while len(rows) < steps:
        order = torch.randperm(n, generator=gen)[: per_epoch * batch_size].view(per_epoch, batch_size)
        rows.extend(order[: steps - len(rows)])
    idx = torch.stack(rows)
    if augment:
        oy, ox, flip = crop_flip_params(steps * batch_size, generator=gen)
        oy, ox, flip = (t.view(steps, batch_size) for t in (oy, ox, flip))
    else:
        oy = ox = torch.zeros(steps, batch_size, dtype=torch.long)
        flip = torch.zeros(steps, batch_size, dtype=torch.bool)
    return idx, oy.to(torch.uint8), ox.to(torch.uint8), flip


@torch.no_grad()
def build_stream(teacher: nn.Module, split: Images, steps: int, batch_size: int, augment: bool, seed: int,
                 on_step: Callable[[int, int], None] | None = None, scratch: Path | None = None) -> RecoveryStream:
    """Sample the stream and run the teacher (eval mode) over it once; the logits are written into the file
    ``scratch`` as they come (memory-mapped: a long stream of many classes never sits whole in memory) when given."""
    idx, oy, ox, flip = sample_stream_indices(len(split), steps, batch_size, augment, seed)
    stream = RecoveryStream(idx, oy, ox, flip, torch.empty(0), augment)
    was_training = teacher.training
    teacher.eval()
    logits = None
    for step, x, _ in itertools.islice(stream.read(split), steps):
        out = teacher(x).to("cpu", torch.float16)
        if logits is None:
            logits = _logits_buffer((steps, *out.shape), scratch)
        logits[step] = out
        if on_step is not None:
            on_step(step + 1, steps)
    teacher.train(was_training)
    stream.logits = logits
    return stream


def _logits_buffer(shape: tuple[int, ...], scratch: Path | None) -> torch.Tensor:
    if scratch is None:
        return torch.empty(shape, dtype=torch.float16)
    scratch.unlink(missing_ok=True)
    return torch.from_file(str(scratch), shared=True, size=math.prod(shape), dtype=torch.float16).view(shape)


def weights_digest(model: nn.Module) -> str:
    """A hash of a model's state_dict (names, shapes and values): the teacher's identity in cache keys."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_or_build_stream(cache_dir: Path, key: str, teacher: nn.Module, split: Images, steps: int, batch_size: int,
                         augment: bool, seed: int, log: Callable[[str], None] = lambda s: None,
                         on_step: Callable[[int, int], None] | None = None) -> tuple[RecoveryStream, str]:
    """The study's cached stream for ``key`` if intact, else a new one (saved atomically with a checksum).

    Returns the stream and where it came from (for the log).
    """
    path = Path(cache_dir) / f"teacher-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file() and checksum_ok(path):
        if (stream := _load(path, steps)) is not None:
            return stream, f"cached {path}"
    elif path.is_file():
        log(f"cached teacher logits {path} fail their checksum; recomputing them")
    scratch = path.with_suffix(".logits.partial")
    path.parent.mkdir(parents=True, exist_ok=True)  # a study searched for the first time has no folder yet
    try:
        stream = build_stream(teacher, split, steps, batch_size, augment, seed, on_step=on_step, scratch=scratch)
        save_checksummed(stream.to_dict(), path)
    finally:
        scratch.unlink(missing_ok=True)
    return _load(path, steps), f"computed once for the study, cached at {path}"


def _load(path: Path, steps: int) -> RecoveryStream | None:
    """A cached stream, its logits memory-mapped from the file (not read into memory); None if it is not one."""
    blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(blob, dict) and blob.get("format") == FORMAT and blob["idx"].shape[0] >= steps:
        return RecoveryStream(blob["idx"], blob["oy"], blob["ox"], blob["flip"], blob["logits"], bool(blob["augment"]))
    return None
