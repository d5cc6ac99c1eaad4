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


def test_round_to_as_a_list_is_a_searchable_choice_and_a_single_value_stays_fixed():
    import pytest

    from autoprune.errors import ConfigError

    space = parse_search_space({"round_to": [8, 1, 4]})
    d = distributions(space, ["g"])
    assert d["round_to"].choices == (1, 4, 8) and space.fixed_round_to == 1
    assert decode({"ratio.g": 0.2, "round_to": 8}, space, ["g"], RecoveryConfig()).round_to == 8
    for fixed in (8, [8]):
        one = parse_search_space({"round_to": fixed})
        assert "round_to" not in distributions(one, ["g"]) and one.fixed_round_to == 8
        assert decode({"ratio.g": 0.2}, one, ["g"], RecoveryConfig()).round_to == 8
    assert decode({"ratio.g": 0.2}, parse_search_space({}), ["g"], RecoveryConfig()).round_to is None
    # with targets the placer is told the trial's rounding
    seen = []
    decode({"alloc.g": 1.0, "target": 2.0, "round_to": 4}, space, ["g"], RecoveryConfig(), [2.0],
           lambda w, t, rt: seen.append(rt) or {"g": 0.5})
    assert seen == [4]
    for bad, why in (([], "empty list"), ([0, 4], ">= 1"), ([4, 4], "repeats"), (0, ">= 1")):
        with pytest.raises(ConfigError, match=why):
            parse_search_space({"round_to": bad})
