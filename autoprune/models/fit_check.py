"""Does the model fit the data? :func:`check_model_fits` refuses, before anything runs, a model whose first
conv / linear layer does not take the data's channels or whose output is not one score per class."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError, first_line


class _FirstLayer(BaseException):  # not an Exception: a forward's own ``except Exception`` must not swallow it
    """Raised by a pre-hook to stop the forward at the first conv / linear layer, carrying its name and input."""


def _first_layer(model: nn.Module, example: torch.Tensor) -> tuple[str, nn.Module, Any] | None:
    """The first ``nn.Conv2d`` or ``nn.Linear`` the forward calls on ``example``, and its input (the forward
    stops there), or None when it calls none."""
    names = {m: n for n, m in model.named_modules()}

    def stop(module: nn.Module, args: tuple) -> None:
        raise _FirstLayer(names[module], module, args[0] if args else None)

    handles = [m.register_forward_pre_hook(stop) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model(example)
    except _FirstLayer as hit:
        return hit.args
    finally:
        for h in handles:
            h.remove()
    return None


def _channel_fix(model_name: str) -> str:
    """The model setting that sets its input channels: ``model.kwargs.in_channels`` if its factory takes one
    (``in_chans`` for timm models)."""
    from autoprune.models.factory import resolve_model

    if model_name.startswith("timm:"):
        return "model.kwargs.in_chans"
    try:
        takes = "in_channels" in inspect.signature(resolve_model(model_name).factory).parameters
    except (TypeError, ValueError):  # no signature to read
        takes = False
    return "model.kwargs.in_channels" if takes else "model.name / model.kwargs"


def _check_first_layer(model: nn.Module, example: torch.Tensor, model_name: str, source: str | None) -> None:
    hit = _first_layer(model, example)
    if hit is None or not isinstance(hit[2], torch.Tensor):
        return
    name, layer, x = hit
    c, shape = example.shape[1], "x".join(str(d) for d in example.shape[1:])
    if isinstance(layer, nn.Conv2d) and x.ndim >= 3 and x.shape[-3] != layer.in_channels != c and layer.in_channels:
        raise AutopruneError(f"the data has {c} channel{'s' * (c != 1)} but the model's first layer ({name}) expects "
                             f"{layer.in_channels} (change data.name / {_channel_fix(model_name)})", source=source,
                             field="data.name")
    if isinstance(layer, nn.Linear) and x.shape[-1] != layer.in_features and layer.in_features:
        raise AutopruneError(f"the data has {shape} images ({example[0].numel()} values) but the model's first layer "
                             f"({name}) expects {layer.in_features} inputs (change data.name / model.name / "
                             "model.kwargs)", source=source, field="data.name")


def model_output(model: nn.Module, x: torch.Tensor, failed: str, advice: str = "", *, source: str | None = None,
                 field: str | None = None) -> torch.Tensor:
    """``model(x)`` in eval mode without gradients (every module's mode restored), checked to be one tensor; where
    the forward raises, one AutopruneError: ``failed``, the error's first line, then ``advice``.

    Example:
        >>> model_output(nn.Linear(3, 2), torch.zeros(1, 4), "the model fails")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        autoprune.errors.AutopruneError: the model fails: RuntimeError: mat1 and mat2 shapes cannot be multiplied ...
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except AutopruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model or data: any error is theirs
        raise AutopruneError(f"{failed}: {first_line(exc, 300)}" + (f" {advice}" if advice else ""), source=source,
                             field=field) from None
    finally:
        for m, mode in modes.items():
            m.train(mode)
    if not isinstance(out, torch.Tensor):
        raise AutopruneError(f"the model returns a {type(out).__name__}; expected one tensor of logits (wrap it to "
                             "return the tensor, as examples/segmentation.py does)", source=source, field=field)
    return out


def check_model_fits(model: nn.Module, example: torch.Tensor, num_classes: int, model_name: str,
                     source: str | None = None) -> None:
    """Refuse a model whose first conv / linear layer does not take the data's channels, or whose output is not
    one score per class, with one line naming both sides and the setting to change. The model runs in eval mode
    without gradients (its weights, buffers and train/eval modes are left as they were).

    Example:
        >>> from autoprune.models.factory import QuickstartCNN
        >>> check_model_fits(QuickstartCNN(), torch.zeros(1, 3, 8, 8), 10, "quickstart_cnn")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        autoprune.errors.AutopruneError: data.name: the data has 3 channels but the model's first layer ...
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            _check_first_layer(model, example, model_name, source)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    out = model_output(model, example, f"the model's forward fails on one image of the data (shape "
                       f"{list(example.shape)})", "(check data.name against model.name / model.kwargs)", source=source,
                       field="model.name")
    outputs = out.shape[-1] if isinstance(out, torch.Tensor) and out.ndim == 2 else None
    if outputs is not None and outputs != num_classes:
        raise AutopruneError(f"the data has {num_classes} classes but the model outputs {outputs} (the model was "
                             f"built with num_classes={num_classes} but ignores it: change model.name / model.kwargs)",
                             source=source, field="model.name")
