"""Scorer registry: channel importance criteria, as torch-pruning importances.

Each scorer declares what it needs before it can score: nothing (weights only), ``gradients`` (a loss
backward over calibration batches, e.g. Taylor) or ``activations`` (forward passes over calibration batches).
:func:`autoprune.pruning.one_shot.prune` prepares those from the calibration batches it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch_pruning as tp

from autoprune.registry import Registry

Needs = Literal["weights", "gradients", "activations"]


@dataclass(frozen=True)
class ScorerSpec:
    factory: Callable[[], tp.importance.Importance]
    needs: Needs = "weights"
    description: str = ""


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + 1e-12)


class CombinedImportance(tp.importance.Importance):
    """``weight * minmax(group L2 magnitude) + (1 - weight) * minmax(group Taylor score)``.

    Needs gradients (a loss backward) before it is called, like Taylor.
    """

    def __init__(self, weight: float = 0.5) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1], got {weight}")
        self.weight = weight
        self.magnitude = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
        self.taylor = tp.importance.GroupTaylorImportance(normalizer=None)

    def __call__(self, group) -> torch.Tensor | None:
        mag = self.magnitude(group)
        tay = self.taylor(group)
        if mag is None or tay is None:
            return mag if tay is None else tay
        return self.weight * _minmax(mag) + (1.0 - self.weight) * _minmax(tay)


SCORERS: Registry[ScorerSpec] = Registry("scorer")
SCORERS.register("l1", ScorerSpec(
    lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None),
    description="L1 norm of each output filter of the group's root layer (Li et al. 2017)"))
SCORERS.register("l2", ScorerSpec(
    lambda: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="first", normalizer=None),
    description="L2 norm of each output filter of the group's root layer"))
SCORERS.register("group_l1", ScorerSpec(
    lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer="mean"),
    description="torch-pruning's Group-L1: L1 magnitude summed over every layer the channel couples"))
SCORERS.register("taylor", ScorerSpec(
    lambda: tp.importance.GroupTaylorImportance(), needs="gradients",
    description="first-order Taylor |w * dL/dw| over the group (Molchanov et al. 2019)"))
SCORERS.register("bn_scale", ScorerSpec(
    lambda: tp.importance.BNScaleImportance(), description="|gamma| of the group's BatchNorm layers"))
SCORERS.register("fpgm", ScorerSpec(
    lambda: tp.importance.FPGMImportance(), description="distance to the geometric median (He et al. 2019)"))
SCORERS.register("lamp", ScorerSpec(
    lambda: tp.importance.LAMPImportance(), description="layer-adaptive magnitude (Lee et al. 2021)"))
SCORERS.register("activation", ScorerSpec(
    lambda: tp.importance.ActivationImportance(), needs="activations",
    description="mean |activation| of each channel over calibration batches (APoZ-style)"))
SCORERS.register("random", ScorerSpec(tp.importance.RandomImportance, description="uniformly random (a baseline)"))
SCORERS.register("combined", ScorerSpec(
    CombinedImportance, needs="gradients",
    description="0.5 x normalised weight magnitude + 0.5 x normalised Taylor gradient score"))


def resolve_scorer(scorer: str | tp.importance.Importance) -> tuple[tp.importance.Importance, Needs, str]:
    """A registered name or an importance object -> (importance, what it needs, display name)."""
    if isinstance(scorer, str):
        spec = SCORERS.get(scorer)
        return spec.factory(), spec.needs, scorer
    if callable(scorer):
        needs: Needs = getattr(scorer, "needs", "weights")
        if isinstance(scorer, (tp.importance.GroupTaylorImportance, CombinedImportance)):
            needs = "gradients"
        elif isinstance(scorer, tp.importance.ActivationImportance):
            needs = "activations"
        return scorer, needs, type(scorer).__name__
    raise TypeError(f"scorer must be a registered name or a torch-pruning importance, got {type(scorer).__name__}")
