"""Saving and loading pruned models safely: pruning history + state_dict, read with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from autoprune.errors import AutopruneError, first_line
from autoprune.files import atomic_save
from autoprune.pruning.depth import drop_blocks
from autoprune.pruning.structural import replay

FORMAT = "autoprune.pruned/1"


def save_pruned(model: nn.Module, history: list, path: str | Path, meta: Mapping[str, Any]) -> None:
    """Save a pruned model: its torch-pruning history, its state_dict and ``meta`` (must hold ``input_shape``)."""
    if "input_shape" not in meta:
        raise ValueError("meta must hold input_shape (the tracing input's shape)")
    atomic_save({"format": FORMAT, "history": history,
                 "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta)}, path)


def load_pruned(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save_pruned` from its unpruned architecture.

    Args:
        path: the saved file.
        model: a fresh, unpruned instance of the architecture (modified in place and returned).

    Example:
        >>> from autoprune.models.factory import create_model
        >>> pruned = load_pruned("runs/quickstart/models/abc.pt", create_model("quickstart_cnn", 10))  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise AutopruneError(f"pruned model file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AutopruneError(f"cannot read pruned model {path}: {first_line(exc)}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise AutopruneError(f"{path} is not an autoprune pruned-model file")
    example = torch.randn(*blob["meta"]["input_shape"])
    model.eval()
    drop_blocks(model, blob["meta"].get("dropped", []))  # residual blocks the trial replaced by the identity
    replay(model, example, blob["history"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise AutopruneError(f"{path} does not fit the rebuilt structure: {first_line(exc)}") from None
    return model
