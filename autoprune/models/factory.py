"""Model registry: torchvision classifiers, CIFAR ResNets, the quickstart CNN, timm models ("timm:<name>") and
user "module:factory" models.

Each registered model carries what the pruner needs to know about it: its input size, its named stages (for
per-stage ratios) and which layers' output channels may be pruned.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.models.cifar_resnet import cifar_resnet
from autoprune.registry import Registry, import_callable


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        factory: ``factory(num_classes, **kwargs) -> nn.Module``.
        stages: stage name -> module-name patterns (fnmatch) of the layers whose output channels form the stage.
        prunable: module-name patterns of layers whose output channels may be pruned; None means every conv and
            linear layer but the output layer.
        note: shown to users where the spec restricts pruning.
    """

    factory: Callable[..., nn.Module]
    stages: dict[str, list[str]] = field(default_factory=dict)
    prunable: list[str] | None = None
    note: str = ""


class QuickstartCNN(nn.Module):
    """A small CNN for 8x8 grayscale digits: three conv blocks and a linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def factory(num_classes: int = 1000, **kwargs) -> nn.Module:
        import torchvision

        kwargs.setdefault("weights", None)
        return getattr(torchvision.models, name)(num_classes=num_classes, **kwargs)

    factory.__name__ = name
    return factory


_CIFAR_NOTE = (
    "CIFAR ResNets (option-A shortcuts): only each block's inner channels (conv1) are pruned; the residual "
    "channels are coupled to the stem through the zero-padding shortcut and are kept."
)

TIMM_NOTE = ("timm model: pruned through torch-pruning's dependency graph like any model; attention layers keep "
             "their head count (timm's Attention is not an nn.MultiheadAttention)")

MODELS: Registry[ModelSpec] = Registry("model")
MODELS.register(
    "quickstart_cnn",
    ModelSpec(QuickstartCNN, stages={"block1": ["features.0"], "block2": ["features.3"], "block3": ["features.7"]}),
)
for _depth in (20, 32, 44, 56):
    MODELS.register(
        f"resnet{_depth}",
        ModelSpec(
            (lambda d: lambda num_classes=10, **kw: cifar_resnet(d, num_classes=num_classes, **kw))(_depth),
            stages={f"layer{i}": [f"layer{i}.*.conv1"] for i in (1, 2, 3)},
            note=_CIFAR_NOTE,
        ),
    )
for _name in ("resnet18", "resnet34", "resnet50"):
    MODELS.register(_name, ModelSpec(_torchvision(_name), stages={f"layer{i}": [f"layer{i}.*"] for i in (1, 2, 3, 4)}))
for _name in ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "vgg11_bn", "vit_b_16"):
    MODELS.register(_name, ModelSpec(_torchvision(_name)))


def _timm(model_name: str) -> Callable[..., nn.Module]:
    """A factory for the timm model ``model_name`` (randomly initialised: weights come from model.checkpoint)."""
    try:
        import timm
    except ImportError:
        raise AutopruneError(f"model 'timm:{model_name}' needs timm: pip install 'autoprune[timm]'",
                             field="model.name") from None
    if not timm.is_model(model_name):
        near = difflib.get_close_matches(model_name, timm.list_models(), n=5)
        raise AutopruneError(f"unknown timm model {model_name!r}" + (f"; similar: {', '.join(near)}" if near else ""),
                             field="model.name")

    def factory(num_classes: int = 1000, **kwargs) -> nn.Module:
        kwargs.setdefault("pretrained", False)
        return timm.create_model(model_name, num_classes=num_classes, **kwargs)

    factory.__name__ = model_name
    return factory


def resolve_model(name: str) -> ModelSpec:
    """The spec for a registered name, ``timm:<name>`` or a ``package.module:factory`` path (imported only when
    named so)."""
    if name.startswith("timm:"):
        return ModelSpec(_timm(name.removeprefix("timm:")), note=TIMM_NOTE)
    if ":" in name:
        return ModelSpec(import_callable(name, "model", field="model.name"))
    return MODELS.get(name)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by registered name or ``module:factory``.

    Example:
        >>> model = create_model("resnet20", num_classes=10)
        >>> sum(p.numel() for p in model.parameters())
        269722
    """
    spec = resolve_model(name)
    try:
        model = spec.factory(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise AutopruneError(f"model {name!r} rejected its arguments: {exc}") from None
    if not isinstance(model, nn.Module):
        raise AutopruneError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


_EXPECTED = "expected a state_dict saved with torch.save(model.state_dict(), path)"


def _unreadable(exc: Exception) -> str:
    """The telling part of a torch.load error (weights-only errors bury it under paragraphs of advice)."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split(" Check the documentation", 1)[0].split(" was not an allowed global", 1)[0]
    text = text.strip().split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _misfit(model: nn.Module, state: dict) -> str | None:
    """The first way ``state`` does not fit ``model`` (shapes, then missing or extra entries), or None."""
    own = model.state_dict()
    for key, value in own.items():
        theirs = getattr(state.get(key), "shape", None)
        if theirs is not None and tuple(theirs) != tuple(value.shape):
            return f"{key} has shape {list(theirs)} in the checkpoint but {list(value.shape)} in the model"
    missing = [k for k in own if k not in state]
    if missing:
        return f"it lacks {len(missing)} of the model's {len(own)} entries (first: {missing[0]})"
    extra = [k for k in state if k not in own]
    if extra:
        return f"it has {len(extra)} entries the model lacks (first: {extra[0]})"
    return None


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict file (weights_only=True) into ``model``.

    Raises:
        AutopruneError: one line naming the file and what was expected, when it is missing, unreadable, not a
            state_dict, or a state_dict of another architecture or width.
    """
    import warnings

    path = Path(path)

    def bad(what: str) -> AutopruneError:
        return AutopruneError(f"{what}; {_EXPECTED}", source=str(path), field="model.checkpoint")

    if not path.is_file():
        raise bad("checkpoint not found")
    if path.stat().st_size == 0:
        raise bad("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes would add lines to a one-line error
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise bad(f"cannot read it ({_unreadable(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise bad(f"it holds a {type(state).__name__}, not a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    problem = _misfit(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            problem = " ".join(str(exc).split())[:300]
    if problem is not None:
        raise AutopruneError(f"does not fit {type(model).__name__}: {problem}; expected the state_dict of this model "
                             "(check model.name, model.kwargs and model.num_classes)", source=str(path),
                             field="model.checkpoint")
    return model
