from __future__ import annotations

from autoprune.pareto import dominates, non_dominated

MAX_MIN = ["maximize", "minimize"]


def test_dominance_needs_one_strict_improvement():
    assert dominates([0.9, 5], [0.9, 6], MAX_MIN)
    assert not dominates([0.9, 6], [0.9, 6], MAX_MIN)
    assert not dominates([0.95, 7], [0.9, 6], MAX_MIN)


def test_non_dominated_hand_case():
    # (accuracy, macs): b dominates d; a, b, c trade off; e is dominated by c
    pts = [[0.80, 1.0], [0.90, 2.0], [0.95, 4.0], [0.85, 3.0], [0.94, 5.0]]
    assert non_dominated(pts, MAX_MIN) == [0, 1, 2]


def test_minimise_both():
    assert non_dominated([[1, 1], [2, 0], [2, 2]], ["minimize", "minimize"]) == [0, 1]
