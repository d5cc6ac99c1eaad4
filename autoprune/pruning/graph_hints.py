"""What torch-pruning needs to know about a model that its dependency graph does not tell it.

* Attention: the width of every ``nn.MultiheadAttention`` is pruned in multiples of its number of heads, so every
  head keeps the same, smaller head dimension and no head is removed (torch-pruning's torchvision example).
  torchvision's ``VisionTransformer`` reads ``hidden_dim`` in its forward; it is updated after pruning.
  timm's ``Attention`` (one ``qkv`` projection) is given to torch-pruning as ``num_heads`` so every head loses the
  same dimensions, and its ``head_dim``, ``attn_dim`` and ``scale`` are updated after pruning (torch-pruning's
  timm ViT example).
* Custom layers: a model may carry ``autoprune_pruners = {LayerType: torch_pruning BasePruningFunc()}``, passed to
  torch-pruning as ``customized_pruners`` (the same attribute convention as ``autoprune_prunable``).
* :func:`failing_layer` runs a model and names the innermost layer whose forward raised.

The probe that checks a model before a search (:mod:`autoprune.pruning.prunability`) builds on these; this module imports
nothing of autoprune's but its errors, so :mod:`autoprune.pruning.structural` can use it without a cycle.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from autoprune.errors import first_line


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
    kwargs = {"customized_pruners": customized_pruners(model), "round_to": round_to}
    qkv = {m.qkv: m.num_heads for m in model.modules() if _qkv_attention(m)}
    if qkv:
        kwargs |= {"num_heads": qkv, "prune_head_dims": True, "prune_num_heads": False}
    return kwargs


def _qkv_attention(m: nn.Module) -> bool:
    """timm's attention layout: one ``qkv`` linear projection split into ``num_heads`` heads of ``head_dim``."""
    return isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads") and hasattr(m, "head_dim")


def after_pruning(model: nn.Module) -> nn.Module:
    """Fix the attributes a model's forward reads that torch-pruning does not know about (in place)."""
    for m in model.modules():
        if type(m).__name__ == "VisionTransformer" and hasattr(m, "conv_proj") and hasattr(m, "hidden_dim"):
            m.hidden_dim = m.conv_proj.out_channels
        if _qkv_attention(m):
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim
            if hasattr(m, "scale"):
                m.scale = m.head_dim**-0.5  # what the fused path uses: both paths agree
    return model


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
        return layer, first_line(exc, limit=160)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
