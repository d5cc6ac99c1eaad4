"""Depth pruning: residual blocks whose output has their input's shape may be replaced by the identity.

torch-pruning removes channels, not layers; dropping whole blocks is autoprune's own. A block qualifies when it
matches one of the search space's ``depth.blocks`` patterns, takes one tensor and returns one tensor of the same
shape (checked by running the model once). A dropped block keeps its name in the module tree (as an
``nn.Identity``), so the names torch-pruning records for the other layers stay valid.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
from torch import nn

from autoprune.errors import AutopruneError


def droppable_blocks(model: nn.Module, example_inputs: torch.Tensor, patterns: Sequence[str]) -> list[str]:
    """Names of the modules matching ``patterns`` whose single output has their single input's shape."""
    candidates = {n: m for n, m in model.named_modules() if n and any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    # a matched module inside another matched one is left to its parent
    candidates = {n: m for n, m in candidates.items()
                  if not any(n.startswith(o + ".") for o in candidates if o != n)}
    shapes: dict[str, bool] = {}
    hooks = []
    for name, module in candidates.items():
        def hook(_m, args, out, name=name):
            ok = (len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)
                  and args[0].shape == out.shape)
            shapes[name] = shapes.get(name, True) and ok
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [n for n in candidates if shapes.get(n)]


def drop_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Replace the named blocks of ``model`` by ``nn.Identity`` (in place); returns the model."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise AutopruneError(f"cannot drop block {name!r}: the model has no module of that name")
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
            parent[int(attr)] = nn.Identity()
        else:
            setattr(parent, attr, nn.Identity())
    return model

