"""Pure multi-objective math: directions, dominance and the non-dominated set (no Optuna, no torch)."""

from __future__ import annotations

import enum
import math
from typing import Sequence


class Direction(str, enum.Enum):
    """Whether an objective is maximised or minimised; a ``str`` so Optuna takes it as a study direction.

    >>> Direction("maximize") is Direction.MAXIMIZE
    True
    >>> Direction("maximise")
    Traceback (most recent call last):
    ...
    ValueError: unknown direction 'maximise'; valid: maximize, minimize
    """

    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"

    def __str__(self) -> str:  # "maximize", not "Direction.MAXIMIZE", in f-strings and messages
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> Direction:
        raise ValueError(f"unknown direction {value!r}; valid: {', '.join(d.value for d in cls)}")


def _directions(directions: Sequence[str]) -> list[Direction]:
    return [Direction(d) for d in directions]


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if ``a`` is at least as good as ``b`` in every objective and better in one.

    >>> dominates([0.9, 10], [0.8, 10], ["maximize", "minimize"])
    True
    >>> dominates([0.9, 12], [0.8, 10], ["maximize", "minimize"])
    False
    """
    better = False
    for x, y, d in zip(a, b, _directions(directions)):
        if d is Direction.MAXIMIZE:
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (duplicates of a front point are all kept)."""
    directions = _directions(directions)
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, directions) for j, q in enumerate(points) if j != i)]


def nondominated_ranks(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Non-dominated sorting: rank 0 for the front, 1 for the front of what is left, and so on.

    >>> nondominated_ranks([[0.9, 5], [0.8, 5], [0.7, 9]], ["maximize", "minimize"])
    [0, 1, 2]
    """
    directions = _directions(directions)
    ranks = [-1] * len(points)
    left = list(range(len(points)))
    rank = 0
    while left:
        sub = [points[i] for i in left]
        front = {left[j] for j in non_dominated(sub, directions)}
        for i in front:
            ranks[i] = rank
        left = [i for i in left if i not in front]
        rank += 1
    return ranks


def hypervolume_2d(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (accuracy to maximise, cost to minimise) and bounded by ``ref``.

    ``ref`` = (lowest accuracy that counts, highest cost that counts); points outside it add nothing.

    >>> hypervolume_2d([(0.9, 0.5)], ref=(0.1, 1.0))
    0.4
    """
    pts = sorted((c, a) for a, c in points if a > ref[0] and c < ref[1])
    area, best_acc = 0.0, ref[0]
    for i, (cost, acc) in enumerate(pts):
        next_cost = pts[i + 1][0] if i + 1 < len(pts) else ref[1]
        best_acc = max(best_acc, acc)
        area += (next_cost - cost) * (best_acc - ref[0])
    return round(area, 12)


def accuracy_at(points: Sequence[tuple[float, float]], reduction: float, slack: float = 0.03) -> float | None:
    """The front's accuracy at exactly ``reduction`` (base cost / cost), interpolated linearly in log-reduction
    between the two front points around it. Below the front's least reduction, its least-reduced point stands in
    when it reduces at most ``slack`` (relative) more than asked (conservative: a model reducing less would be at
    least as accurate); otherwise, and beyond the front's largest reduction, None (no extrapolation).

    ``points``: (accuracy, reduction) pairs; the dominated ones are dropped first, so the front only falls as the
    reduction grows. Comparing methods at a tightly matched reduction this way removes the advantage a point
    gets from landing a little short of the target.

    >>> round(accuracy_at([(0.90, 1.5), (0.86, 2.1)], 2.0), 4)
    0.8658
    """
    front = sorted((r, a) for a, r in points if not any(a2 >= a and r2 >= r and (a2, r2) != (a, r) for a2, r2 in points))
    for (r0, a0), (r1, a1) in zip(front, front[1:]):
        if r0 <= reduction <= r1:
            w = math.log(reduction / r0) / math.log(r1 / r0) if r1 > r0 else 0.0
            return a0 + w * (a1 - a0)
    if front and math.isclose(front[-1][0], reduction, rel_tol=1e-9):
        return front[-1][1]
    if front and reduction < front[0][0] <= reduction * (1 + slack):
        return front[0][1]
    return None


def knee_index(accuracy: Sequence[float], cost: Sequence[float]) -> int:
    """The knee of a front: the point farthest above the line from its cheapest to its most accurate point, with
    both axes normalised to [0, 1] over the front. Ties go to the cheaper point.

    >>> knee_index([0.5, 0.88, 0.9], [1.0, 2.0, 10.0])
    1
    """
    if not accuracy:
        raise ValueError("empty front")
    a_lo, a_hi, c_lo, c_hi = min(accuracy), max(accuracy), min(cost), max(cost)
    a_span, c_span = (a_hi - a_lo) or 1.0, (c_hi - c_lo) or 1.0
    scores = [((a - a_lo) / a_span - (c - c_lo) / c_span, -c) for a, c in zip(accuracy, cost)]
    return max(range(len(scores)), key=lambda i: scores[i])


def select(entries: Sequence[dict], cost: str = "macs", *, min_accuracy: float | None = None,
           max_macs: float | None = None, max_latency_ms: float | None = None, knee: bool = False) -> tuple[dict, str]:
    """Pick one front entry and say why.

    Caps (``max_macs``, ``max_latency_ms``) and the floor (``min_accuracy``) filter the front; then ``knee`` picks
    the knee of what is left, a floor alone picks the cheapest by ``cost``, and caps alone pick the most accurate.

    Raises:
        LookupError: no entry meets the constraints (the message says which were asked).
    """
    asked = []
    pool = list(entries)
    if max_macs is not None:
        pool = [e for e in pool if e["macs"] <= max_macs]
        asked.append(f"MACs <= {max_macs:,.0f}")
    if max_latency_ms is not None:
        pool = [e for e in pool if e["latency_ms"] <= max_latency_ms]
        asked.append(f"latency <= {max_latency_ms:g} ms")
    if min_accuracy is not None:
        pool = [e for e in pool if e["accuracy"] >= min_accuracy]
        asked.append(f"accuracy >= {min_accuracy:g}")
    if not pool:
        raise LookupError(f"no trial on the front meets {' and '.join(asked) or 'the constraints'} "
                          f"({len(entries)} front trials)")
    where = f" among the {len(pool)} front trials with {' and '.join(asked)}" if asked else f" of the {len(pool)}-trial front"
    if knee:
        i = knee_index([e["accuracy"] for e in pool], [e[cost] for e in pool])
        return pool[i], f"knee{where}: the largest accuracy gain per unit of {cost} over the front's extremes"
    if min_accuracy is not None:
        best = min(pool, key=lambda e: (e[cost], -e["accuracy"]))
        return best, f"cheapest by {cost}{where}"
    if asked:
        best = max(pool, key=lambda e: (e["accuracy"], -e[cost]))
        return best, f"most accurate{where}"
    raise LookupError("say what to select: --knee, --min-accuracy, --max-macs or --max-latency-ms")
