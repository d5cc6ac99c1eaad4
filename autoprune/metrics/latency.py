"""Paired, robust latency: a candidate timed interleaved with the base model, on a deployment runtime.

A latency measured alone says as much about the machine at that moment (other workers, a benchmark, turbo) as
about the model. :func:`paired_latency` times the candidate and the base in the same window, alternating
(A,B then B,A, ...; same process, threads and input), so contention hits both; it records the candidate's median
time, the median of the per-pair ratios candidate/base, and their dispersion (the relative interquartile range
of those ratios). A dispersion above :data:`NOISY_DISPERSION` means the machine was contended: the measurement is
repeated once with :data:`RETRY_FACTOR` times the repeats, and if still noisy the result says it is unreliable.

Each latency backend (:data:`LATENCY_BACKENDS`, ``measure.latency_backend``) prepares a model as it would be
deployed: a copy with BatchNorm folded into the preceding convolution (torch.fx's ``fuse``), in eval and inference
mode; ``torchscript`` traces and freezes it; ``onnxruntime`` exports it to ONNX in memory and runs it in an
``InferenceSession`` on the CPU with as many intra-op threads as torch uses. An ONNX file already written (such as
a quantised export) is deployed on onnxruntime by :func:`deploy_onnx`.

Example:
    >>> import torch
    >>> from autoprune.models.factory import QuickstartCNN
    >>> m = QuickstartCNN(width=4)
    >>> r = paired_latency(m, m, torch.randn(1, 1, 8, 8), repeats=3, warmup=1)
    >>> r.backend, r.ms > 0, r.ratio > 0
    ('torch', True, True)
"""

from __future__ import annotations

import io
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.models.copying import copy_model
from autoprune.optional import require
from autoprune.registry import Registry

# Relative IQR of the per-pair ratios above which the machine counts as contended. The median ratio's relative
# standard error is about 0.93 * dispersion / sqrt(pairs): at 0.25, 7 % over 10 pairs, 4 % over 40. A quiet
# machine gives 0.01-0.1; one with more runnable processes than cores gives 1 and more.
NOISY_DISPERSION = 0.25
RETRY_FACTOR = 4  # a noisy measurement is repeated once with this many times the pairs
# One timed sample runs forward passes back to back until it lasts about this long: one pass for all but tiny
# models. Short samples are rarely preempted (the median pair ignores those that are); long ones nearly always are
# on a contended machine (measured: 2 ms samples gave a dispersion of 5 where single passes gave 0.04).
MIN_SAMPLE_MS = 0.1
MAX_CALLS_PER_SAMPLE = 64

Runner = Callable[[], object]  # one finished forward pass of a deployed model on its fixed input
BackendBuilder = Callable[[nn.Module, torch.Tensor], Runner]


@dataclass(frozen=True)
class LatencyResult:
    """A paired measurement: the candidate's and the base's median ms per forward pass, the median of the
    per-pair ratios candidate/base, their relative interquartile range, whether that was low enough to trust
    (:func:`is_noisy`), the backend and the number of pairs behind it."""

    ms: float
    base_ms: float
    ratio: float
    dispersion: float
    reliable: bool
    backend: str
    pairs: int = 0

    @property
    def speedup(self) -> float:
        """How many times faster than the base: 1 / the median paired ratio (inf for a zero ratio)."""
        return 1.0 / self.ratio if self.ratio > 0 else float("inf")


@dataclass(frozen=True)
class Deployed:
    """A model prepared by one latency backend: ``run()`` is one finished forward pass on the fixed input."""

    backend: str
    run: Runner


# ------------------------------------------------------------------------------------------------ pure math
def relative_iqr(values: Sequence[float]) -> float:
    """(Q3 - Q1) / median of ``values``: a dispersion that ignores a few wild values (nan for fewer than two).

    >>> relative_iqr([1.0, 1.0, 1.0, 1.0])
    0.0
    >>> relative_iqr([0.9, 1.0, 1.0, 1.1])  # quartiles 0.975 and 1.025
    0.05
    >>> math.isnan(relative_iqr([1.0]))
    True
    """
    if len(values) < 2:
        return float("nan")
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return round((q3 - q1) / med, 12) if med > 0 else float("inf")


def paired_ratios(times: Sequence[float], base_times: Sequence[float]) -> list[float]:
    """Each pair's candidate time over the base time measured next to it.

    >>> paired_ratios([2.0, 3.0], [1.0, 4.0])
    [2.0, 0.75]
    """
    if len(times) != len(base_times):
        raise ValueError(f"unpaired timings: {len(times)} candidate, {len(base_times)} base")
    return [a / b for a, b in zip(times, base_times)]


def is_noisy(dispersion: float, threshold: float = NOISY_DISPERSION) -> bool:
    """Whether a dispersion says the machine was contended (unknown, nan, counts as noisy).

    >>> is_noisy(0.05), is_noisy(0.5), is_noisy(float("nan"))
    (False, True, True)
    """
    return not dispersion <= threshold


def summarise(times: Sequence[float], base_times: Sequence[float], backend: str = "torch") -> LatencyResult:
    """Paired timings (ms) -> medians, the median paired ratio and its dispersion.

    A burst of contention that slows one pair moves its ratio far less than its times, and the median ignores it:

    >>> r = summarise([2.0, 2.0, 20.0, 2.0], [1.0, 1.0, 10.0, 1.0])
    >>> r.ms, r.base_ms, r.ratio, r.dispersion, r.reliable
    (2.0, 1.0, 2.0, 0.0, True)
    """
    ratios = paired_ratios(times, base_times)
    dispersion = relative_iqr(ratios)
    return LatencyResult(float(statistics.median(times)), float(statistics.median(base_times)),
                         float(statistics.median(ratios)), dispersion, not is_noisy(dispersion), backend, len(ratios))


# ------------------------------------------------------------------------------------ deployment runtimes
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each BatchNorm folded into the convolution before it (torch.fx's
    ``fuse``); a model torch.fx cannot trace is copied unfolded, with a warning."""
    from torch.fx.experimental.optimization import fuse

    model = copy_model(model).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fuse(model, inplace=True).eval()
    except Exception as exc:  # noqa: BLE001 - any tracing failure: measure the model unfolded
        warnings.warn(f"BatchNorm not folded for latency (torch.fx cannot trace the model: {exc})", stacklevel=2)
        return model


def _finished(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> Runner:
    """``fn(x)`` as a runner; on CUDA it is asynchronous and marked with its device, so a sample is timed by CUDA
    events around its passes and synchronised once (:func:`_sample_ms`)."""
    def run() -> object:
        return fn(x)

    if x.device.type == "cuda":
        run.cuda_device = x.device  # type: ignore[attr-defined]
    return run


def _torch(model: nn.Module, x: torch.Tensor) -> Runner:
    return _finished(fold_batchnorm(model), x)


def _torchscript(model: nn.Module, x: torch.Tensor) -> Runner:
    folded = fold_batchnorm(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(folded, x).eval())
    return _finished(frozen, x)


def onnx_session(model: str | Path | bytes, purpose: str = "an ONNX Runtime session"):
    """An onnxruntime ``InferenceSession`` of an ONNX model (a file or its bytes) on the CPU, with as many
    intra-op threads as torch uses and one inter-op thread; ``purpose`` names what needs it if onnxruntime is
    missing. Its threads do not spin-wait after a run: a paired measurement alternates two sessions, and one's
    spinning threads would take the cores from the other's next run."""
    ort = require("onnxruntime", "export", purpose)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def deploy_onnx(model: str | Path | bytes, x: torch.Tensor) -> Deployed:
    """An ONNX model (a file or its bytes) deployed on onnxruntime to run on ``x``, ready for
    :func:`paired_latency` with ``backend="onnxruntime"`` (e.g. a quantised ONNX file against the float one).

    Example:
        >>> a, b = deploy_onnx("model.int8.onnx", x), deploy_onnx("model.onnx", x)  # doctest: +SKIP
        >>> paired_latency(a, b, x, backend="onnxruntime").speedup  # doctest: +SKIP
    """
    session = onnx_session(model)
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
    return Deployed("onnxruntime", lambda: session.run(None, feed))


def _onnxruntime(model: nn.Module, x: torch.Tensor) -> Runner:
    require("onnxruntime", "export", "measure.latency_backend: onnxruntime")
    folded, x = fold_batchnorm(model).cpu(), x.detach().cpu()
    buffer = io.BytesIO()  # exported as autoprune.deliver.export does, but in memory
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(folded, (x,), buffer, input_names=["input"], output_names=["logits"], dynamo=False)
    return deploy_onnx(buffer.getvalue(), x).run


LATENCY_BACKENDS = Registry[BackendBuilder]("latency backend")
LATENCY_BACKENDS.register("torch", _torch)
LATENCY_BACKENDS.register("torchscript", _torchscript)
LATENCY_BACKENDS.register("onnxruntime", _onnxruntime)


def deploy(model: nn.Module | Deployed, x: torch.Tensor, backend: str = "torch") -> Deployed:
    """``model`` prepared by ``backend`` to run on ``x`` (a :class:`Deployed` of that backend passes through, so a
    base deployed once serves every trial). ``model`` itself is left as it was."""
    if isinstance(model, Deployed):
        if model.backend != backend:
            raise ValueError(f"a model deployed with {model.backend!r} cannot be timed as {backend!r}")
        return model
    return Deployed(backend, LATENCY_BACKENDS.get(backend)(model, x))


# ------------------------------------------------------------------------------------------------ timing
def _sample_ms(run: Runner, calls: int) -> float:
    """Milliseconds per forward pass over ``calls`` passes back to back (on CUDA: between two CUDA events, the
    device synchronised before the first and after the last)."""
    device = getattr(run, "cuda_device", None)
    if device is not None:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - t0) * 1000.0 / calls


def _calls_per_sample(a: Runner, b: Runner) -> int:
    """Passes per sample so that the slower model's sample lasts about :data:`MIN_SAMPLE_MS` (timer and Python
    overhead, about a microsecond, then matter little even for a tiny model)."""
    one = max(min(_sample_ms(a, 1) for _ in range(3)), min(_sample_ms(b, 1) for _ in range(3)))
    return max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(MIN_SAMPLE_MS / max(one, 1e-6))))


def _paired_samples(a: Runner, b: Runner, repeats: int, calls: int) -> tuple[list[float], list[float]]:
    """``repeats`` pairs, alternating which model goes first (A,B then B,A) so that neither always runs second."""
    times: list[float] = []
    base_times: list[float] = []
    for i in range(repeats):
        if i % 2 == 0:
            times.append(_sample_ms(a, calls))
            base_times.append(_sample_ms(b, calls))
        else:
            base_times.append(_sample_ms(b, calls))
            times.append(_sample_ms(a, calls))
    return times, base_times


def paired_latency(model: nn.Module | Deployed, base: nn.Module | Deployed, x: torch.Tensor, repeats: int = 20,
                   warmup: int = 5, backend: str = "torch") -> LatencyResult:
    """Latency of ``model`` measured interleaved with ``base`` on the same input ``x`` (see the module's doc).

    Either model may be passed already :func:`deploy`-ed with ``backend``. Neither is changed.

    Example:
        >>> import torch
        >>> r = paired_latency(torch.nn.Linear(4, 2), torch.nn.Linear(4, 8), torch.randn(1, 4), repeats=3)
        >>> r.pairs >= 3 and r.ms > 0 and r.base_ms > 0
        True
    """
    a, b = deploy(model, x, backend), deploy(base, x, backend)
    with torch.inference_mode():
        for _ in range(warmup):
            a.run()
            b.run()
        calls = _calls_per_sample(a.run, b.run)
        result = summarise(*_paired_samples(a.run, b.run, max(1, repeats), calls), backend=backend)
        if not result.reliable:  # contended: once more, with more pairs
            result = summarise(*_paired_samples(a.run, b.run, max(2, repeats * RETRY_FACTOR), calls), backend=backend)
    return result
