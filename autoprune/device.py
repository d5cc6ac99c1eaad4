"""Which device a process computes on, and the settings that make CUDA fast.

* ``--device cuda`` with ``--workers N``: worker ``i`` computes on GPU ``i mod count`` (:func:`gpu_for_worker`);
  a Ray trial sees only the GPU (or fraction of one) Ray gave it, as ``cuda:0``.
* On CUDA: ``cudnn.benchmark`` (each layer shape's fastest kernels, picked once), models and image batches in
  ``channels_last`` (what tensor cores want), bf16 autocast in the fine-tunes (``recovery.precision``,
  :func:`autoprune.train.distill.autocast_dtype`), latency timed with CUDA events (:mod:`autoprune.metrics.latency`).
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.errors import AutopruneError


def gpu_for_worker(worker: int | None, count: int) -> int:
    """The GPU index of worker ``worker`` (None: a single process) on a machine with ``count`` GPUs.

    Example:
        >>> [gpu_for_worker(i, 2) for i in range(5)], gpu_for_worker(None, 4)
        ([0, 1, 0, 1, 0], 0)
    """
    if count < 1:
        raise AutopruneError("--device cuda was asked for but CUDA is not available here", field="device")
    return 0 if worker is None else worker % count


def resolve_device(name: str, worker: int | None = None) -> torch.device:
    """``cpu``, or ``cuda:<gpu of this worker>`` (made this process's current device, with cudnn.benchmark on); a
    clear error where CUDA is missing or the name is unknown."""
    if name not in ("cpu", "cuda"):
        raise AutopruneError(f"unknown device {name!r}; expected cpu or cuda", field="device")
    if name == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = torch.device("cuda", gpu_for_worker(worker, count))
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
    return device


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, the default layout elsewhere (on the CPU channels_last is often slower)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` moved to ``device`` (in place), its 4-d weights in that device's memory format."""
    return model.to(device=device, memory_format=memory_format(device))
