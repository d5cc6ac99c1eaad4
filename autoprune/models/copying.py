"""Copying a model safely: some models cache tensors derived from their parameters (an attention-bias cache built
in eval mode), which ``copy.deepcopy`` refuses ("Only Tensors created explicitly by the user (graph leaves) support
the deepcopy protocol"). Such caches are left out of the copy (it rebuilds them on its next forward) and kept in the
original.

Example:
    >>> import torch
    >>> class Cached(torch.nn.Linear):
    ...     def forward(self, x):
    ...         self.cache = {"w2": self.weight * 2}  # derived from a parameter: not a graph leaf
    ...         return super().forward(x)
    >>> m = Cached(2, 2)
    >>> _ = m(torch.zeros(1, 2))
    >>> copy_model(m).cache, len(m.cache)
    ({}, 1)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def _derived(value: Any) -> bool:
    """A tensor computed from others (not a graph leaf), or a container holding one."""
    if isinstance(value, torch.Tensor):
        return value.grad_fn is not None
    if isinstance(value, dict):
        return any(_derived(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_derived(v) for v in value)
    return False


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``; where the model caches derived tensors in plain attributes, those attributes are
    emptied in the copy (a container becomes an empty one of its type, a tensor None) and left as they were in
    ``model``."""
    try:
        return copy.deepcopy(model)
    except RuntimeError as exc:
        if "deepcopy protocol" not in str(exc):
            raise
    cached = [(m, k, v) for m in model.modules() for k, v in vars(m).items()
              if not k.startswith("_") and _derived(v)]
    try:
        for m, k, v in cached:
            setattr(m, k, type(v)() if isinstance(v, (dict, list, tuple)) else None)
        return copy.deepcopy(model)
    finally:
        for m, k, v in cached:
            setattr(m, k, v)
