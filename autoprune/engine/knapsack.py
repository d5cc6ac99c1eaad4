"""Sensitivity under a budget: the allocation a per-group sensitivity scan predicts to lose least at a cost target.

The scan (:func:`autoprune.engine.sensitivity.scan`) prunes each group alone at a few ratios and scores it after
BatchNorm re-calibration. Assuming the groups' accuracy drops add up, the allocation with the smallest predicted
drop that reaches a cost target is a knapsack; :func:`sensitivity_allocation` solves it greedily, as AIMET's
greedy compression-ratio selection and ModelOpt's FastNAS do: from the unpruned model, repeatedly prune one group
one step further, the step with the least predicted drop per unit of cost saved, until the target is reached.
Pure functions over the scan's scores and a cost callable, tested directly.
"""

from __future__ import annotations

from typing import Callable, Mapping


def drop_at(scores: Mapping[float, float], base: float, ratio: float) -> float:
    """The accuracy drop of one group pruned alone at ``ratio``, interpolated linearly between its scanned ratios
    (no drop at ratio 0; beyond the last one, its last slope), never below 0.

    >>> s = {0.25: 0.90, 0.5: 0.80}
    >>> [round(drop_at(s, 0.92, r), 3) for r in (0.0, 0.125, 0.5, 0.75)]
    [0.0, 0.01, 0.12, 0.22]
    """
    points = [(0.0, 0.0)] + sorted((r, max(0.0, base - a)) for r, a in scores.items())
    for (r0, d0), (r1, d1) in zip(points, points[1:]):
        if ratio <= r1:
            return d0 + (d1 - d0) * (ratio - r0) / (r1 - r0)
    (r0, d0), (r1, d1) = points[-2], points[-1]
    return max(0.0, d1 + (d1 - d0) * (ratio - r1) / (r1 - r0))


def sensitivity_allocation(scores: Mapping[str, Mapping[float, float]], base: float, target: float,
                           reduction: Callable[[Mapping[str, float]], float],
                           bounds: Mapping[str, tuple[float, float]], step: float = 0.05) -> dict[str, float]:
    """Per-group ratios, greedily grown one ``step`` at a time (the step with the least predicted drop per unit of
    cost saved first, within each group's ``bounds``) until ``reduction(ratios) >= target``; the closest reached if
    even the bounds fall short.

    Example (two groups of equal cost; the first loses little up to 0.5, then much):
        >>> scores = {"a": {0.5: 0.85, 0.9: 0.5}, "b": {0.5: 0.65}}
        >>> cost = lambda r: 1.0 / (1.0 - sum(r.values()) / 2)
        >>> sensitivity_allocation(scores, 0.9, 1.5, cost, {"a": (0.0, 0.9), "b": (0.0, 0.9)}, step=0.1)
        {'a': 0.5, 'b': 0.2}
    """
    ratios = {g: bounds[g][0] for g in scores}
    while reduction(ratios) < target:
        best, best_rate = None, float("inf")
        for g in scores:
            r = min(ratios[g] + step, bounds[g][1])
            if r <= ratios[g]:
                continue
            after = {**ratios, g: r}
            saved = 1.0 / reduction(ratios) - 1.0 / reduction(after)  # the share of the base's cost this step saves
            loss = drop_at(scores[g], base, r) - drop_at(scores[g], base, ratios[g])
            rate = loss / saved if saved > 0 else float("inf")
            if rate < best_rate:
                best, best_rate = g, rate
        if best is None:
            break
        ratios[best] = round(min(ratios[best] + step, bounds[best][1]), 10)
    return ratios
