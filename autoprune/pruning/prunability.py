"""The prunability probe: before any training or storage write, prune a copy of the model in every group and run
it; when that breaks, find the group that breaks it and the layer whose forward fails, and say what to do."""

from __future__ import annotations

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


def check_prunable(model: nn.Module, example_inputs: torch.Tensor, layout: GroupLayout, *,
                   ratio: float = PROBE_RATIO, source: str | None = None) -> None:
    """Prune a copy of ``model`` at ``ratio`` in every group and run it; raise a one-line AutopruneError naming
    the group and layer that break, and the fix, when it does not work. The model is left unchanged."""
    def attempt(ratios: dict[str, float]) -> str | None:
        try:
            pruned, _ = prune_with_plan(model, example_inputs, ratios, "l1", layout=layout, check_forward=False)
        except AutopruneError as exc:
            return exc.message
        broken = failing_layer(pruned, example_inputs)
        return None if broken is None else f"layer {broken[0]!r} fails on forward ({broken[1]})"

    if attempt({g: ratio for g in layout.names}) is None:
        return
    why, culprit = "", layout.names[0]
    for g in layout.names:  # which group breaks it, alone
        why = attempt({h: (ratio if h == g else 0.0) for h in layout.names}) or ""
        if why:
            culprit = g
            break
    unknown = unknown_layers(model)
    layers = f"; torch-pruning has no pruner for {', '.join(unknown[:3])}" if unknown else ""
    roots = ", ".join(layout.roots.get(culprit, [culprit])[:3])
    raise AutopruneError(
        f"the model cannot be pruned: pruning group {culprit!r} (layers {roots}) at {ratio} breaks it: "
        f"{why or 'the groups fail only together'}{layers}. Add those layers to 'ignore' in the search space, or "
        "give the model an autoprune_pruners = {LayerType: torch_pruning BasePruningFunc} attribute "
        "(torch-pruning customized_pruners)", source=source, field="ignore")

