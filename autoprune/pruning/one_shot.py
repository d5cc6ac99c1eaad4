"""``autoprune.prune``: one model pruned once, its groups probed first (a group whose pruning breaks the model is
kept whole, with a warning naming it)."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import torch
from torch import nn

from autoprune.pruning.prunability import freeze_unprunable
from autoprune.pruning.structural import build_layout, prune_with_plan


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratios: float | Mapping[str, float] = 0.3,
    scorer="l1",
    *,
    groups: str = "dependency",
    named: Mapping[str, Sequence[str]] | None = None,
    prunable: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    round_to: int | None = None,
    calibration: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> nn.Module:
    """A structurally pruned copy of ``model`` (channels really removed; the output layer kept).

    Args:
        model: the model to prune (left unchanged).
        example_inputs: a batch for tracing.
        ratios: one ratio for every group, or a mapping group name -> ratio (groups not named keep 0).
        scorer: a registered scorer name (see ``autoprune.pruning.scorers.SCORERS``) or a torch-pruning importance.
        groups, named, prunable, ignore: how groups are formed (see :func:`build_layout`).
        round_to: keep channel counts multiples of this.
        calibration: ``[(x, y), ...]`` batches for scorers that need gradients or activations.

    A group whose pruning breaks the model (torch-pruning cannot apply it, or the pruned copy fails on forward) is
    kept whole, with one warning naming it and why (:func:`autoprune.pruning.prunability.freeze_unprunable`).

    Example:
        >>> import torch, autoprune
        >>> from autoprune.models.factory import QuickstartCNN
        >>> small = autoprune.prune(QuickstartCNN(), torch.randn(1, 1, 8, 8), ratios=0.5, scorer="l1")
        >>> small.features[0].out_channels
        16
    """
    layout = build_layout(model, example_inputs, by=groups, named=named, prunable=prunable, ignore=ignore)
    layout, frozen = freeze_unprunable(model, example_inputs, layout)
    for line in frozen.values():
        warnings.warn(f"autoprune.prune: {line}", stacklevel=2)
    pruned, _ = prune_with_plan(model, example_inputs, ratios, scorer, layout=layout, round_to=round_to,
                                calibration=calibration)
    return pruned
