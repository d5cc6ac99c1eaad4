"""benchmarks/allocation_breadth.py: per target, the rung-0 candidates' best score and the spread of their
allocations, read from a study's records (a continuation counted once, with its candidate's rung-0 score)."""

from __future__ import annotations

import doctest

import optuna
import pytest
from optuna.distributions import FloatDistribution

from autoprune.engine.record import Fidelity, Metrics, PlanRecord, TrialRecord
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("allocation_breadth")


def _add(study: optuna.Study, ratios: dict[str, float], target: float, scores: dict[int, float],
         continues: int | None = None) -> None:
    acc = scores[max(scores)]
    rec = TrialRecord(Metrics(acc, 1e6, 1e4, 1.0), PlanRecord("l1", ratios, target=target),
                      Fidelity(scores, {k: 100 for k in scores}), continues=continues)
    attrs = rec.to_user_attrs()
    study.add_trial(optuna.trial.create_trial(params={"alloc.a": 0.5}, distributions={"alloc.a": FloatDistribution(0, 1)},
                                              values=[acc, 1e6], user_attrs=attrs))


def test_helpers_doctests_pass(bench):
    assert doctest.testmod(bench).failed == 0


def test_breadth_per_target_counts_a_candidate_once(bench, tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}",
                                directions=["maximize", "minimize"])
    _add(study, {"a": 0.5, "b": 0.5}, 2.0, {0: 0.60})                       # trial 0: uniform
    _add(study, {"a": 0.2, "b": 0.8}, 2.0, {0: 0.70})                       # trial 1: spread 0.6
    _add(study, {"a": 0.2, "b": 0.8}, 2.0, {0: 0.70, 20: 0.85}, continues=1)  # trial 1 taken to rung 20
    _add(study, {"a": 0.6, "b": 0.6}, 3.0, {0: 0.30})
    found = bench.breadth(tmp_path)
    assert set(found) == {"2", "3"}
    two = found["2"]
    assert two["candidates"] == 2          # the continuation is the same candidate
    assert two["best_rung0"] == 0.70       # its rung-0 score, not the rung-20 one
    assert two["top5_mean_rung0"] == pytest.approx(0.65)
    assert two["median_spread"] == pytest.approx(0.3)  # median of 0.0 and 0.6
    assert found["3"] == {"candidates": 1, "best_rung0": 0.30, "top5_mean_rung0": 0.3, "median_spread": 0.0,
                          "top5_spread": 0.0}


def _recs(items) -> list[TrialRecord]:
    """Records numbered in order: (ratios, target, scores, warm_start, continues)."""
    return [TrialRecord(Metrics(max(s.values()), 1e6, 1e4, 1.0), PlanRecord("l1", r, target=t), Fidelity(s), number=i,
                        state="COMPLETE", warm_start=w, continues=c) for i, (r, t, s, w, c) in enumerate(items)]


def test_spread_per_phase_splits_warm_starts_screen_and_model(bench):
    uniform, wide, narrow = {"a": 0.5, "b": 0.5}, {"a": 0.2, "b": 0.8}, {"a": 0.45, "b": 0.55}
    recs = _recs([(uniform, 2.0, {0: 0.6}, "uniform", None), (wide, 2.0, {0: 0.6}, None, None),
                  (wide, 2.0, {0: 0.6}, None, None), (narrow, 2.0, {0: 0.6}, None, None),
                  (narrow, 2.0, {0: 0.6, 20: 0.7}, None, 3)])  # a continuation is no new candidate
    assert bench.phases(recs, screen=2) == {"2": {"warm": 0.0, "screen": 0.6, "model": 0.1}}


def test_reversals_count_the_pairs_the_longer_recovery_reordered(bench):
    recs = _recs([({"a": 0.5}, 3.0, {0: 0.30, 20: 0.60}, None, None), ({"a": 0.5}, 3.0, {0: 0.32, 20: 0.58}, None, None),
                  ({"a": 0.5}, 3.0, {0: 0.35, 20: 0.65}, None, None), ({"a": 0.5}, 3.0, {0: 0.20}, None, None)])
    got = bench.reversals(recs)["3"]
    assert got["candidates"] == 3 and got["reversed_pairs"] == 0.333
    assert got["kendall_tau"] == 0.333


def test_promotions_rank_the_promoted_by_the_targets_final_rung0_scores_and_find_the_pick(bench):
    r = {"a": 0.5, "b": 0.5}
    recs = _recs([(r, 3.0, {0: 0.30}, "uniform", None),           # 0: warm start, rung-0 rank 3
                  (r, 3.0, {0: 0.35}, None, None),                # 1: rank 1, promoted
                  (r, 3.0, {0: 0.35, 100: 0.78}, None, 1),        # its continuation
                  (r, 3.0, {0: 0.32}, None, None),                # 2: rank 2, never promoted
                  (r, 3.0, {0: 0.30, 100: 0.80}, "uniform", 0),   # the warm start promoted: the pick
                  (r, 3.0, {0: 0.20}, None, None),                # 5: rank 4
                  (r, 1.5, {0: 0.80}, None, None)])               # another target, nothing promoted
    found = bench.promotions(recs)
    three = found["3"]
    assert three["candidates"] == 4 and three["top_rung"] == 100
    assert [(p["number"], p["rung0_rank"], p["top"], p["warm_start"]) for p in three["promoted"]] == [
        (0, 3, 0.80, "uniform"), (1, 1, 0.78, None)]
    assert three["pick_rung0_rank"] == 3            # the best at rung 100, third at rung 0
    assert three["in_final_top"] == 1               # of the two promoted, only trial 1 is in the final top 2
    assert found["1.5"]["promoted"] == [] and found["1.5"]["pick_rung0_rank"] is None
