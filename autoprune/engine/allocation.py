"""Exact-cost candidates: an allocation (how pruning is shared across groups) scaled onto a cost target.

The search samples an *allocation*, one non-negative weight per group, and, where the study lists targets, a
target; :func:`place` then finds the one global factor ``s`` for which the ratios ``clip(s * weight, low, high)``
cost the target (bisection on ``s``; the cost is non-increasing in it), so every candidate of a target is
comparable with every other. Equal weights give uniform pruning at the target. Pure functions over a cost
callable (:meth:`autoprune.pruning.macs_model.CostModel.reduction`), tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

TOLERANCE = 0.01  # a candidate lands within 1 % of its target's MACs reduction (pick, acc_at and bisection alike)


@dataclass(frozen=True)
class Placement:
    """The ratios :func:`place` found, the reduction they reach, and whether that is within the tolerance."""

    ratios: dict[str, float]
    reduction: float
    target: float
    within: bool

    @property
    def miss(self) -> float:
        """Relative distance of the reduction from the target (0.004 = 0.4 % off)."""
        return abs(self.reduction / self.target - 1.0)


def ratios_at(weights: Mapping[str, float], scale: float, bounds: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """``clip(scale * weight, low, high)`` per group.

    >>> ratios_at({"a": 1.0, "b": 0.5}, 0.4, {"a": (0.0, 0.8), "b": (0.1, 0.8)})
    {'a': 0.4, 'b': 0.2}
    >>> ratios_at({"a": 1.0, "b": 0.0}, 2.0, {"a": (0.0, 0.8), "b": (0.1, 0.8)})
    {'a': 0.8, 'b': 0.1}
    """
    return {g: min(max(scale * w, bounds[g][0]), bounds[g][1]) for g, w in weights.items()}


def place(weights: Mapping[str, float], target: float, reduction: Callable[[Mapping[str, float]], float],
          bounds: Mapping[str, tuple[float, float]], tolerance: float = TOLERANCE, steps: int = 60,
          nudge: Mapping[str, float] | None = None) -> Placement:
    """The ratios of allocation ``weights`` scaled so that ``reduction(ratios)`` (base cost / pruned cost) is
    ``target``, within ``tolerance`` where the channel counts allow it; otherwise the closest found.

    Channel counts are whole, so one global factor can step over the target (a uniform allocation moves every
    layer by a channel at once). ``nudge``: group -> the ratio of one channel of that group; when the bisection
    misses, single groups are then moved a channel at a time (the move that helps most first) until the
    candidate is within ``tolerance``: the allocation's shape, kept to within a channel per group.

    Example (a cost that falls linearly with the mean ratio):
        >>> cost = lambda r: 1.0 / (1.0 - sum(r.values()) / len(r))
        >>> p = place({"a": 1.0, "b": 1.0}, 2.0, cost, {"a": (0.0, 0.9), "b": (0.0, 0.9)})
        >>> p.within, round(p.ratios["a"], 2), round(p.reduction, 2)
        (True, 0.5, 2.0)
    """
    if target <= 0:
        raise ValueError(f"a target reduction must be > 0, got {target}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"allocation weights must be >= 0, got {dict(weights)}")
    least = min((w for w in weights.values() if w > 0), default=0.0)  # at this scale every group is at its bound
    lo, hi = 0.0, (max(b[1] for b in bounds.values()) / least if least else 0.0)
    best = _try(weights, lo, target, reduction, bounds)
    for scale in (hi,) + (None,) * steps:
        if scale is None:
            scale = 0.5 * (lo + hi)
        cand = _try(weights, scale, target, reduction, bounds)
        if cand.miss < best.miss:
            best = cand
        if cand.miss <= tolerance * 0.5 or hi - lo < 1e-9:
            break
        if scale == hi and cand.reduction < target:  # even the largest ratios fall short: the closest is the most
            break
        lo, hi = (scale, hi) if cand.reduction < target else (lo, scale)
    if best.miss > tolerance and nudge:
        best = _nudge(best, reduction, bounds, nudge, tolerance)
    return Placement(best.ratios, best.reduction, target, best.miss <= tolerance)


@dataclass(frozen=True)
class Placer:
    """:func:`place` bound to one study's cost: a callable a process can pickle (Ray checkpoints the sampler that
    holds one), as long as ``reduction`` is a method of a picklable cost model.

    >>> p = Placer(lambda r: 1.0 / (1.0 - sum(r.values()) / len(r)), {"a": (0.0, 0.9), "b": (0.0, 0.9)})
    >>> round(p({"a": 1.0, "b": 0.5}, 2.0).reduction, 2), {g: round(v, 2) for g, v in p.ratios({"a": 1.0, "b": 1.0}, 2.0).items()}
    (2.0, {'a': 0.5, 'b': 0.5})
    """

    reduction: Callable[[Mapping[str, float]], float]
    bounds: Mapping[str, tuple[float, float]]
    nudge: Mapping[str, float] | None = None

    def __call__(self, weights: Mapping[str, float], target: float) -> Placement:
        return place(weights, target, self.reduction, self.bounds, nudge=self.nudge)

    def ratios(self, weights: Mapping[str, float], target: float) -> dict[str, float]:
        """The ratios of ``weights`` placed on ``target``."""
        return self(weights, target).ratios


def _nudge(start: Placement, reduction: Callable[[Mapping[str, float]], float],
           bounds: Mapping[str, tuple[float, float]], nudge: Mapping[str, float], tolerance: float,
           rounds: int = 16) -> Placement:
    """Greedy one-channel moves of single groups towards the target, each group moved at most once."""
    best, moved = start, set()
    for _ in range(rounds):
        if best.miss <= tolerance:
            break
        sign = 1.0 if best.reduction < best.target else -1.0  # prune more, or less
        options = []
        for g, step in nudge.items():
            r = min(max(best.ratios[g] + sign * step, bounds[g][0]), bounds[g][1])
            if g in moved or r == best.ratios[g]:
                continue
            ratios = {**best.ratios, g: r}
            options.append((g, Placement(ratios, reduction(ratios), best.target, False)))
        if not options:
            break
        g, cand = min(options, key=lambda o: o[1].miss)
        if cand.miss >= best.miss:
            break
        best, moved = cand, moved | {g}
    return best


def _try(weights: Mapping[str, float], scale: float, target: float,
         reduction: Callable[[Mapping[str, float]], float], bounds: Mapping[str, tuple[float, float]]) -> Placement:
    ratios = ratios_at(weights, scale, bounds)
    return Placement(ratios, reduction(ratios), target, False)
