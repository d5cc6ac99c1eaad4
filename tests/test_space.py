from __future__ import annotations

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autoprune.config import RecoveryConfig, parse_search_space
from autoprune.space import decode, distributions


def test_distributions_name_every_group_and_searchable_recovery():
    space = parse_search_space({"ratio": {"low": 0.0, "high": 0.5, "step": 0.1}, "scorers": ["l1", "taylor"],
                                "recovery": {"lr": {"low": 0.001, "high": 0.1, "log": True}, "steps": {"low": 10, "high": 50},
                                             "temperature": {"choices": [2, 4]}, "alpha": 0.5}})
    d = distributions(space, ["g1", "g2"])
    assert set(d) == {"ratio.g1", "ratio.g2", "scorer", "recovery.lr", "recovery.steps", "recovery.temperature"}
    assert isinstance(d["ratio.g1"], FloatDistribution) and d["ratio.g1"].high == 0.5
    assert isinstance(d["recovery.steps"], IntDistribution)
    assert isinstance(d["scorer"], CategoricalDistribution) and d["scorer"].choices == ("l1", "taylor")


def test_single_scorer_is_fixed_not_searched():
    space = parse_search_space({"scorers": ["fpgm"]})
    assert "scorer" not in distributions(space, ["g"])
    plan = decode({"ratio.g": 0.2}, space, ["g"], RecoveryConfig())
    assert plan.scorer == "fpgm"


def test_decode_fills_fixed_recovery_and_casts():
    space = parse_search_space({"recovery": {"alpha": 0.5, "steps": {"low": 10, "high": 50}}})
    plan = decode({"ratio.a": 0.3, "recovery.steps": 20}, space, ["a"], RecoveryConfig(lr=0.02))
    assert plan.ratios == {"a": 0.3}
    assert plan.recovery.alpha == 0.5 and plan.recovery.steps == 20 and plan.recovery.lr == 0.02
