from __future__ import annotations

import math

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


def test_hypervolume_two_points_hand_computed():
    from autoprune.pareto import hypervolume_2d

    # (acc, cost): strips [0.2, 0.6) at 0.7-0.1 and [0.6, 1.0) at 0.9-0.1 -> 0.4*0.6 + 0.4*0.8 = 0.56
    assert abs(hypervolume_2d([(0.7, 0.2), (0.9, 0.6)], ref=(0.1, 1.0)) - 0.56) < 1e-12
    # a dominated point adds nothing; points outside the reference add nothing
    assert abs(hypervolume_2d([(0.7, 0.2), (0.9, 0.6), (0.6, 0.7), (0.05, 0.1), (0.99, 1.2)], ref=(0.1, 1.0)) - 0.56) < 1e-12


def test_knee_picks_the_bend():
    from autoprune.pareto import knee_index

    acc = [0.60, 0.85, 0.88, 0.90]
    cost = [1.0, 2.0, 5.0, 10.0]
    assert knee_index(acc, cost) == 1


FRONT = [
    {"trial": 1, "accuracy": 0.80, "macs": 100, "latency_ms": 1.0},
    {"trial": 2, "accuracy": 0.90, "macs": 200, "latency_ms": 2.0},
    {"trial": 3, "accuracy": 0.92, "macs": 500, "latency_ms": 4.0},
    {"trial": 4, "accuracy": 0.93, "macs": 1000, "latency_ms": 9.0},
]


def test_select_cheapest_meeting_accuracy_floor():
    from autoprune.pareto import select

    entry, why = select(FRONT, min_accuracy=0.91)
    assert entry["trial"] == 3 and "cheapest" in why


def test_select_most_accurate_under_caps():
    from autoprune.pareto import select

    assert select(FRONT, max_macs=600)[0]["trial"] == 3
    assert select(FRONT, max_latency_ms=2.5)[0]["trial"] == 2


def test_select_knee_and_nothing_meets():
    import pytest

    from autoprune.pareto import select

    assert select(FRONT, knee=True)[0]["trial"] == 2
    with pytest.raises(LookupError, match="accuracy >= 0.99"):
        select(FRONT, min_accuracy=0.99)


def test_progress_front_count_skips_infeasible_trials():
    import optuna

    from autoprune.engine.storage import feasible as _feasible

    ok = optuna.trial.create_trial(values=[0.9, 1.0], system_attrs={"constraints:max_macs": -5.0})
    bad = optuna.trial.create_trial(values=[0.9, 1.0], system_attrs={"constraints": [1.0, -1.0]})
    plain = optuna.trial.create_trial(values=[0.9, 1.0])
    assert _feasible(ok) and not _feasible(bad) and _feasible(plain)


def test_accuracy_at_interpolates_in_log_reduction_along_the_front():
    from autoprune.pareto import accuracy_at

    pts = [(0.90, 1.5), (0.86, 2.1), (0.80, 3.2), (0.85, 1.6)]  # (0.85, 1.6) is dominated by (0.86, 2.1)
    w = math.log(2.0 / 1.5) / math.log(2.1 / 1.5)
    assert math.isclose(accuracy_at(pts, 2.0), 0.90 + w * (0.86 - 0.90))
    assert accuracy_at(pts, 1.5) == 0.90 and math.isclose(accuracy_at(pts, 3.2), 0.80)
    assert accuracy_at(pts, 1.47) == 0.90, "a point reducing a little more stands in (conservatively)"
    assert accuracy_at(pts, 1.4) is None and accuracy_at(pts, 3.3) is None, "no extrapolation"
    assert accuracy_at([(0.9, 2.0)], 2.0) == 0.9


def test_a_misspelt_direction_is_an_error_naming_it_and_the_valid_ones():
    import pytest

    from autoprune.pareto import nondominated_ranks

    with pytest.raises(ValueError, match=r"'maximise'.*maximize, minimize"):
        dominates([1, 1], [0, 0], ["maximise", "minimize"])
    for call in (lambda d: non_dominated([[1, 1], [0, 0]], d), lambda d: nondominated_ranks([[1, 1], [0, 0]], d)):
        with pytest.raises(ValueError, match="maximise"):
            call(["maximise", "minimize"])


def test_directions_are_typed_strings_that_optuna_accepts():
    import optuna

    from autoprune.config import DIRECTIONS
    from autoprune.pareto import Direction

    assert DIRECTIONS == {"accuracy": Direction.MAXIMIZE, "macs": Direction.MINIMIZE,
                          "params": Direction.MINIMIZE, "latency_ms": Direction.MINIMIZE}
    assert all(isinstance(d, Direction) for d in DIRECTIONS.values())
    assert dominates([0.9, 5], [0.8, 5], [Direction.MAXIMIZE, Direction.MINIMIZE])
    assert f"{Direction.MAXIMIZE}" == "maximize" and Direction.MINIMIZE == "minimize"
    study = optuna.create_study(directions=[Direction.MAXIMIZE, Direction.MINIMIZE])
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
