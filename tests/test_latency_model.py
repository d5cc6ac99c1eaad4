"""Latency targets: the per-group latency model (autoprune.pruning.latency_model) and a search placed on it."""

from __future__ import annotations

import doctest

import optuna
import pytest

from autoprune.config import load_study
from autoprune.engine import fidelity
from autoprune.engine.allocation import TOLERANCE
from autoprune.engine.backends.optuna_backend import run_search
from autoprune.engine.context import prepare
from autoprune.engine.record import TrialRecord
from autoprune.errors import ConfigError
from autoprune.pruning import latency_model
from autoprune.pruning.latency_model import LatencyCostModel


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(latency_model).failed == 0 and doctest.testmod(fidelity).failed == 0


def test_savings_add_up_interpolate_and_never_reach_zero_time() -> None:
    m = LatencyCostModel({"a": {0.5: 0.4, 1.0: 0.6}, "b": {0.5: 0.5}}, 2.0)
    assert m.ratio({"a": 0.25, "b": 0.0}) == pytest.approx(0.8)  # half of a's saving at 0.5
    assert m.reduction({"a": 0.5}) == pytest.approx(1 / 0.6)
    assert m.ratio({"a": 1.0, "b": 0.9}) == latency_model.FLOOR  # 0.6 + 0.5 saved: more than all of it
    assert LatencyCostModel.from_dict(m.to_dict()) == m


def test_targets_take_one_kind(write_study) -> None:
    for bad in ({}, {"macs_reduction": [2], "latency_reduction": [1.5]}):
        with pytest.raises(ConfigError, match="one of macs_reduction or latency_reduction"):
            load_study(write_study({"targets": bad}))
    with pytest.raises(ConfigError, match="must be > 1"):
        load_study(write_study({"targets": {"latency_reduction": [0.9]}}))
    t = load_study(write_study({"targets": {"latency_reduction": [2, 1.5]}})).config.targets
    assert t.values == [1.5, 2.0] and t.objective == "latency_ms"
    # a MACs-target study keeps the fingerprint it had before latency targets existed
    macs = load_study(write_study({"targets": {"macs_reduction": [2]}}))
    assert macs._defining()["targets"] == {"macs_reduction": [2.0]}


def test_at_a_latency_target_promotion_ranks_without_latency_but_with_macs() -> None:
    objectives, directions = ["accuracy", "macs", "latency_ms"], ["maximize", "minimize", "minimize"]
    assert fidelity.ranked_objectives(objectives, directions, 1.5, "latency_ms")[0] == ["accuracy", "macs"]
    assert fidelity.ranked_objectives(objectives, directions, 1.5, "macs")[0] == ["accuracy", "latency_ms"]


@pytest.mark.slow
def test_a_latency_target_study_places_every_candidate_on_the_predicted_speed_up(write_study, monkeypatch) -> None:
    """The latency model is measured once (then read from the study folder), and every candidate, the baselines
    included, is placed on its target by it. How well the prediction matches a measurement depends on the
    machine: benchmarks/RESULTS.md, not a test."""
    model = {"name": "quickstart_cnn", "kwargs": {"width": 32}, "base_training": {"epochs": 2, "lr": 0.05, "batch_size": 64}}
    path = write_study({"targets": {"latency_reduction": [1.2]}, "model": model, "budget": {"n_trials": 4},
                        "measure": {"latency_batch_size": 32, "latency_repeats": 3, "latency_warmup": 1}},
                       {"scorers": ["l1"]})
    ctx = prepare(load_study(path))
    lat = ctx.latency_cost
    assert lat is not None and set(lat.savings) == set(ctx.groups)
    for points in lat.savings.values():
        assert sorted(points) == list(latency_model.SCAN_RATIOS)
        assert list(points.values()) == sorted(points.values()) and all(0 <= v <= 1 for v in points.values())
    out = run_search(ctx, n_trials=4)
    recs = [TrialRecord.from_frozen(t) for t in out.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert len(recs) == 4 and {r.warm_start for r in recs[:2]} == {"uniform", "global"}
    top = lat.reduction({g: ctx.bounds[g][1] for g in ctx.groups})
    for r in recs:
        assert r.plan.target == 1.2
        if top >= 1.2 * (1 + TOLERANCE):  # the model allows the target: every candidate is placed on it
            assert lat.reduction(r.plan.ratios) == pytest.approx(1.2, rel=TOLERANCE), r.number
    # a second worker reads the model back instead of timing again
    monkeypatch.setattr(latency_model, "scan", lambda *a, **k: pytest.fail("scanned again"))
    assert prepare(load_study(path)).latency_cost == lat
