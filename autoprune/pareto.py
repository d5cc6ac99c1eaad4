"""Pure multi-objective math: dominance and the non-dominated set (no Optuna, no torch)."""

from __future__ import annotations

from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if ``a`` is at least as good as ``b`` in every objective and better in one.

    >>> dominates([0.9, 10], [0.8, 10], ["maximize", "minimize"])
    True
    >>> dominates([0.9, 12], [0.8, 10], ["maximize", "minimize"])
    False
    """
    better = False
    for x, y, d in zip(a, b, directions):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (duplicates of a front point are all kept)."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, directions) for j, q in enumerate(points) if j != i)]
