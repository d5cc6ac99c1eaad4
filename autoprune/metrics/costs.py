"""Measurements of a model: MACs (fvcore; one multiply-add = one), parameters, latency, accuracy."""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import torch
from torch import nn

from autoprune.data.splits import Images
from autoprune.metrics.latency import LatencyResult


def count_macs(model: nn.Module, example_inputs: torch.Tensor, by_module: bool = False) -> int | tuple[int, dict[str, int]]:
    """Multiply-accumulate operations of one forward pass at the batch size of ``example_inputs``, divided by it.

    fvcore counts one multiply-add as one flop; element-wise ops it skips (add, max_pool) are not counted.
    With ``by_module`` also returns the per-module breakdown (fvcore's ``by_module()``).
    """
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, example_inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = int(analysis.total()) // max(1, int(example_inputs.shape[0]))
        breakdown = {k: int(v) for k, v in analysis.by_module().items()} if by_module else {}
    model.train(was_training)
    return (total, breakdown) if by_module else total


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def latency_ms(model: nn.Module, example_inputs: torch.Tensor, repeats: int = 20, warmup: int = 5) -> float:
    """Median wall time of one forward pass in milliseconds (inference mode, after warm-up, synchronised)."""
    was_training = model.training
    model.eval()
    device = example_inputs.device
    for _ in range(warmup):
        model(example_inputs)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(example_inputs)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    model.train(was_training)
    return float(statistics.median(times))


def paired_fields(lat: LatencyResult) -> dict[str, Any]:
    """A paired latency (:func:`autoprune.metrics.latency.paired_latency`) as the flat fields ``evaluate`` and ``retrain``
    report: the model's and the base's median ms, the median paired ratio model/base and the speed-up it gives
    (1 / ratio), the ratios' dispersion, whether the measurement is reliable, the backend and the pairs behind it.

    >>> from autoprune.metrics.latency import LatencyResult
    >>> f = paired_fields(LatencyResult(0.5, 1.0, 0.5, 0.04, True, "torch", 10))
    >>> f["latency_speedup"], f["base_latency_ms"], f["latency_reliable"], f["latency_backend"]
    (2.0, 1.0, True, 'torch')
    """
    return {"latency_ms": lat.ms, "base_latency_ms": lat.base_ms, "latency_ratio": lat.ratio,
            "latency_speedup": lat.speedup if lat.ratio > 0 else None, "latency_dispersion": lat.dispersion,
            "latency_reliable": lat.reliable, "latency_backend": lat.backend, "latency_pairs": lat.pairs}


@torch.inference_mode()
def correct(model: nn.Module, split: Images, batch_size: int = 256) -> torch.Tensor:
    """Per image of ``split`` (in order), whether ``model``'s top-1 prediction is right (a bool tensor)."""
    was_training = model.training
    model.eval()
    hits = [(model(x).argmax(1) == y).cpu() for x, y in split.batches(batch_size)]
    model.train(was_training)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def accuracy(model: nn.Module, split: Images, batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of ``model`` on a split."""
    return int(correct(model, split, batch_size).sum()) / max(1, len(split))


def measure(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    latency_batch_size: int | None = None,
    repeats: int = 20,
    warmup: int = 5,
) -> dict[str, Any]:
    """MACs, params and latency of ``model``.

    Args:
        model: the model.
        example_inputs: one batch; MACs are per image; latency uses ``latency_batch_size`` images (default:
            the batch of ``example_inputs``).

    Example:
        >>> import torch, autoprune
        >>> from autoprune.models.factory import QuickstartCNN
        >>> m = autoprune.measure(QuickstartCNN(), torch.randn(1, 1, 8, 8))
        >>> sorted(m)
        ['latency_ms', 'macs', 'params']
    """
    x = example_inputs[:1]
    lat_x = example_inputs
    if latency_batch_size is not None and latency_batch_size != example_inputs.shape[0]:
        lat_x = x.expand(latency_batch_size, *x.shape[1:]).contiguous()
    return {
        "macs": count_macs(model, x),
        "params": count_params(model),
        "latency_ms": latency_ms(model, lat_x, repeats=repeats, warmup=warmup),
    }
