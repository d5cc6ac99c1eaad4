"""The prunability probe: before any training or storage write, prune a copy of the model in every group and run
it. A group whose pruning breaks the model (torch-pruning cannot apply it, or the pruned copy fails on forward) is
frozen, kept whole, with the reason; the search runs on the rest. Only when no group is left is it an error, naming
the group and the layer that break and what to do."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.pruning.graph_hints import customized_pruners, failing_layer
from autoprune.pruning.structural import GroupLayout, prune_with_plan

PROBE_RATIO = 0.3


def unknown_layers(model: nn.Module) -> list[str]:
    """Layers outside torch holding their own parameters and no customized pruner: torch-pruning guesses how to
    prune those parameters (their last dimension), which is where pruning a custom layer usually goes wrong."""
    custom = set(customized_pruners(model) or {})
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
            if name and type(m) not in custom and not type(m).__module__.startswith("torch.")
            and any(True for _ in m.parameters(recurse=False))]


def _attempt(model: nn.Module, example_inputs: torch.Tensor, layout: GroupLayout, ratios: dict[str, float]
             ) -> str | None:
    """Why pruning ``model`` at ``ratios`` breaks it (torch-pruning's error, or the layer whose forward fails), or
    None when the pruned copy runs. The groups at ratio 0 are left out of torch-pruning's sight altogether (their
    layers ignored), so a group it cannot handle does not fail the attempt of another."""
    idle = {g: "" for g, r in ratios.items() if r == 0.0}
    try:
        pruned, _ = prune_with_plan(model, example_inputs, {g: r for g, r in ratios.items() if g not in idle}, "l1",
                                    layout=without(layout, idle), check_forward=False)
    except AutopruneError as exc:
        return exc.message
    broken = failing_layer(pruned, example_inputs)
    return None if broken is None else f"layer {broken[0]!r} fails on forward ({broken[1]})"


def probe_groups(model: nn.Module, example_inputs: torch.Tensor, layout: GroupLayout, ratio: float = PROBE_RATIO
                 ) -> dict[str, str]:
    """The groups to freeze, each with why. All groups pruned at ``ratio`` together first (one attempt when the
    model prunes); where that breaks, the groups that break the model alone are found by halving the set (a set
    that runs clears all its groups), then the rest are tried together and, only if they still break it, added one
    by one, so that groups that break only together are found too. The model is left unchanged."""
    def attempt(groups: list[str]) -> str | None:
        return _attempt(model, example_inputs, layout, {g: (ratio if g in groups else 0.0) for g in layout.names})

    def alone(groups: list[str], why: str | None) -> dict[str, str]:
        if why is None:
            return {}
        if len(groups) == 1:
            return {groups[0]: why}
        half = len(groups) // 2
        a, b = groups[:half], groups[half:]
        return {**alone(a, attempt(a)), **alone(b, attempt(b))}

    frozen = alone(layout.names, attempt(layout.names))
    rest = [g for g in layout.names if g not in frozen]
    if not frozen or not rest or attempt(rest) is None:
        return frozen
    kept: list[str] = []
    for g in rest:
        why = attempt([*kept, g])
        if why:
            frozen[g] = f"breaks together with {', '.join(kept[-3:])}: {why}"
        else:
            kept.append(g)
    return frozen


def without(layout: GroupLayout, frozen: dict[str, str]) -> GroupLayout:
    """``layout`` with the ``frozen`` groups kept whole (their roots among the ignored layers)."""
    return dataclasses.replace(layout, roots={g: r for g, r in layout.roots.items() if g not in frozen},
                               channels={g: c for g, c in layout.channels.items() if g not in frozen},
                               ignored=[*layout.ignored, *(r for g in frozen for r in layout.roots.get(g, []))])


def frozen_line(layout: GroupLayout, group: str, why: str) -> str:
    """One line naming a frozen group, its layers and the reason."""
    roots = ", ".join(layout.roots.get(group, [group])[:3])
    return f"group {group!r} (layers {roots}) kept whole: pruning it breaks the model: {why}"


def freeze_unprunable(model: nn.Module, example_inputs: torch.Tensor, layout: GroupLayout, *,
                      ratio: float = PROBE_RATIO, source: str | None = None) -> tuple[GroupLayout, dict[str, str]]:
    """The layout without the groups whose pruning breaks the model, and those groups, each with a line naming its
    layers and the reason (:func:`probe_groups`). Raises a one-line AutopruneError naming the group, the layer and
    the fix when every group breaks it."""
    frozen = probe_groups(model, example_inputs, layout, ratio)
    if len(frozen) < len(layout.names):
        return without(layout, frozen), {g: frozen_line(layout, g, why) for g, why in frozen.items()}
    culprit = layout.names[0]
    unknown = unknown_layers(model)
    layers = f"; torch-pruning has no pruner for {', '.join(unknown[:3])}" if unknown else ""
    roots = ", ".join(layout.roots.get(culprit, [culprit])[:3])
    raise AutopruneError(
        f"the model cannot be pruned: every group breaks it; pruning group {culprit!r} (layers {roots}) at {ratio}: "
        f"{frozen[culprit]}{layers}. Add those layers to 'ignore' in the search space, or give the model an "
        "autoprune_pruners = {LayerType: torch_pruning BasePruningFunc} attribute (torch-pruning "
        "customized_pruners)", source=source, field="ignore")
