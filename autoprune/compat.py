"""What torch-pruning needs to know about a model, and a probe that finds what it cannot prune before any trial.

* Attention: the width of every ``nn.MultiheadAttention`` is pruned in multiples of its number of heads, so every
  head keeps the same, smaller head dimension and no head is removed (torch-pruning's torchvision example).
  torchvision's ``VisionTransformer`` reads ``hidden_dim`` in its forward; it is updated after pruning.
* Custom layers: a model may carry ``autoprune_pruners = {LayerType: torch_pruning BasePruningFunc()}``, passed to
  torch-pruning as ``customized_pruners`` (the same attribute convention as ``autoprune_prunable``).
* :func:`check_prunable` prunes a copy of the model at a probe ratio and runs it; when that breaks, it finds the
  group that breaks it and the layer whose forward fails, and says what to do.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.errors import AutopruneError

if TYPE_CHECKING:
    from autoprune.pruning import GroupLayout

PROBE_RATIO = 0.3


def customized_pruners(model: nn.Module) -> dict[Any, Any] | None:
    """The model's own torch-pruning pruners for its custom layers (``autoprune_pruners``), if any."""
    pruners = getattr(model, "autoprune_pruners", None)
    return dict(pruners) if pruners else None


def pruner_kwargs(model: nn.Module, round_to: int | None = None) -> dict[str, Any]:
    """``MetaPruner`` arguments this model needs: custom-layer pruners, and for attention a ``round_to`` that
    keeps every ``nn.MultiheadAttention``'s width a multiple of its number of heads (torch-pruning's torchvision
    example; its ``num_heads`` option handles separate q/k/v projections, and leaves nn.MultiheadAttention whole)."""
    heads = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    if heads:
        round_to = math.lcm(round_to or 1, *heads)
    return {"customized_pruners": customized_pruners(model), "round_to": round_to}


def after_pruning(model: nn.Module) -> nn.Module:
    """Fix the attributes a model's forward reads that torch-pruning does not know about (in place)."""
    for m in model.modules():
        if type(m).__name__ == "VisionTransformer" and hasattr(m, "conv_proj") and hasattr(m, "hidden_dim"):
            m.hidden_dim = m.conv_proj.out_channels
    return model


def unknown_layers(model: nn.Module) -> list[str]:
    """Layers outside torch holding their own parameters and no customized pruner: torch-pruning guesses how to
    prune those parameters (their last dimension), which is where pruning a custom layer usually goes wrong."""
    custom = set(customized_pruners(model) or {})
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
            if name and type(m) not in custom and not type(m).__module__.startswith("torch.")
            and any(True for _ in m.parameters(recurse=False))]


def failing_layer(model: nn.Module, example_inputs: torch.Tensor) -> tuple[str, str] | None:
    """Run ``model`` once; on failure return (innermost module whose forward raised, the error's first line)."""
    stack: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def enter(m, _args):
        stack.append(names.get(m, type(m).__name__))

    def leave(m, _args, _out):
        if stack:
            stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        layer = next((s for s in reversed(stack) if s), "(the model's own forward)")
        return layer, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def check_prunable(model: nn.Module, example_inputs: torch.Tensor, layout: GroupLayout, *,
                   ratio: float = PROBE_RATIO, source: str | None = None) -> None:
    """Prune a copy of ``model`` at ``ratio`` in every group and run it; raise a one-line AutopruneError naming
    the group and layer that break, and the fix, when it does not work. The model is left unchanged."""
    from autoprune.pruning import prune_with_plan

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

