"""What a pruned copy costs before it is built: MACs as a function of each group's pruning ratio.

Every conv/linear layer's MACs scale with the fraction of its output channels and of its input channels that
pruning keeps; torch-pruning's dependency graph says which root layer's ratio prunes which layer's outputs and
which layer's inputs (a BatchNorm follows its convolution's outputs). :func:`build_cost_model` reads that once per
study from the base model (fvcore's per-layer MACs and the graph); :meth:`CostModel.macs` then predicts the MACs of
any plan in microseconds, which is what lets the search place a candidate exactly on a cost target
(:mod:`autoprune.engine.allocation`). Layers no group touches keep their cost. The kept channel counts follow
torch-pruning's own arithmetic (:func:`kept_channels`), so the prediction matches the pruned model's fvcore count
(checked against real pruning in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch_pruning as tp
from torch import nn

from autoprune.metrics.costs import count_macs
from autoprune.pruning.graph_hints import customized_pruners, pruner_kwargs
from autoprune.pruning.structural import GroupLayout, out_width, rounded_ratio


def kept_channels(channels: int, ratio: float, round_to: int | None = None) -> int:
    """How many of ``channels`` output channels torch-pruning keeps at ``ratio`` (local pruning of one root
    layer, with autoprune's ``round_to`` rounding).

    >>> [kept_channels(64, r) for r in (0.0, 0.3, 0.5, 0.99)]
    [64, 44, 32, 0]
    >>> [kept_channels(16, r, round_to=8) for r in (0.2, 0.75)]
    [16, 8]
    """
    r = rounded_ratio(channels, ratio, round_to)
    if r <= 0.0:
        return channels
    return int(channels * (1.0 - r))


@dataclass(frozen=True)
class LayerCost:
    """One layer's MACs in the base model and the root layers whose ratios shrink its outputs and its inputs."""

    name: str
    macs: float
    out_root: str | None = None
    in_root: str | None = None


@dataclass(frozen=True)
class CostModel:
    """The base model's MACs split by layer, with the root layers that shrink each (see the module docstring).

    ``root_group``: root layer -> the group whose ratio it takes; ``channels``: root layer -> its output channels.
    """

    layers: tuple[LayerCost, ...]
    fixed: float  # MACs of layers no group shrinks (and anything fvcore counts outside conv/linear/norm layers)
    root_group: dict[str, str]
    channels: dict[str, int]
    round_to: int | None = None
    base: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", self.fixed + sum(layer.macs for layer in self.layers))

    def kept_fractions(self, ratios: Mapping[str, float]) -> dict[str, float]:
        """Root layer -> the fraction of its output channels kept when its group is pruned at ``ratios[group]``."""
        return {root: kept_channels(ch, ratios.get(self.root_group[root], 0.0), self.round_to) / ch
                for root, ch in self.channels.items()}

    def macs(self, ratios: Mapping[str, float]) -> float:
        """Predicted MACs of the base model pruned at ``ratios`` (group -> ratio; a group not named keeps all)."""
        kept = self.kept_fractions(ratios)
        total = self.fixed
        for layer in self.layers:
            total += layer.macs * kept.get(layer.out_root, 1.0) * kept.get(layer.in_root, 1.0)
        return total

    def channel_steps(self) -> dict[str, float]:
        """Group -> the ratio of one channel (``round_to`` channels) of its widest root: the finest move of that
        group's ratio that changes its cost (for :func:`autoprune.engine.allocation.place`'s ``nudge``)."""
        out: dict[str, float] = {}
        for root, ch in self.channels.items():
            g = self.root_group[root]
            out[g] = min(out.get(g, 1.0), (self.round_to or 1) / ch)
        return out

    def reduction(self, ratios: Mapping[str, float]) -> float:
        """Base MACs over predicted MACs: 2.0 means half the MACs."""
        return self.base / max(1.0, self.macs(ratios))


def build_cost_model(model: nn.Module, example_inputs: torch.Tensor, layout: GroupLayout,
                     round_to: int | None = None) -> CostModel:
    """Read each layer's MACs (fvcore) and which root layer shrinks its outputs and inputs (torch-pruning's
    dependency graph) from ``model``, which is left unchanged."""
    _, by_module = count_macs(model, example_inputs, by_module=True)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False,
                                               customized_pruners=customized_pruners(model))
    shrinks: dict[str, dict[str, str]] = {}  # layer -> {"out": root, "in": root}
    for roots in layout.roots.values():
        for root in roots:
            module = modules[root]
            pruner = dg.get_pruner_of_module(module)
            group = dg.get_pruning_group(module, pruner.prune_out_channels, idxs=list(range(out_width(module))))
            for dep, _ in group:
                target = names.get(dep.target.module)
                if target is not None:
                    side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                    shrinks.setdefault(target, {}).setdefault(side, root)
    # leaves, and layers with children of their own (timm's BatchNormAct2d holds its activation): their own MACs
    units = {n for n, m in modules.items() if n and (not any(True for _ in m.children())
                                                      or any(True for _ in m.parameters(recurse=False)))}
    own = {n: float(by_module.get(n, 0)) - sum(float(by_module.get(f"{n}.{c}", 0)) for c, _ in modules[n].named_children())
           for n in units}
    layers, fixed = [], 0.0
    for name in sorted(units):
        macs = own[name]
        if not macs:
            continue
        sides = shrinks.get(name, {})
        if _depthwise(modules[name]):  # groups == channels: pruning the channels once shrinks it once
            sides = {"out": sides.get("out") or sides.get("in")}
        if sides:
            layers.append(LayerCost(name, macs, sides.get("out"), sides.get("in")))
        else:
            fixed += macs
    fixed += float(by_module.get("", 0)) - sum(own.values())
    channels = {r: out_width(modules[r]) for rs in layout.roots.values() for r in rs}
    root_group = {r: g for g, rs in layout.roots.items() for r in rs}
    rt = pruner_kwargs(model, round_to)["round_to"]
    return CostModel(tuple(layers), fixed, root_group, channels, rt)


def _depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
