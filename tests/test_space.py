from __future__ import annotations

from optuna.distributions import CategoricalDistribution, FloatDistribution

from autoprune.config import RecoveryConfig, parse_search_space
from autoprune.engine.space import decode, distributions


def test_distributions_name_every_group_and_searchable_recovery():
    space = parse_search_space({"ratio": {"low": 0.0, "high": 0.5, "step": 0.1}, "scorers": ["l1", "taylor"],
                                "recovery": {"lr": {"low": 0.001, "high": 0.1, "log": True}, "alpha": {"low": 0.5, "high": 0.9},
                                             "temperature": {"choices": [2, 4]}}})
    d = distributions(space, ["g1", "g2"])
    assert set(d) == {"ratio.g1", "ratio.g2", "scorer", "recovery.lr", "recovery.alpha", "recovery.temperature"}
    assert isinstance(d["ratio.g1"], FloatDistribution) and d["ratio.g1"].high == 0.5
    assert isinstance(d["recovery.alpha"], FloatDistribution) and d["recovery.lr"].log
    assert isinstance(d["scorer"], CategoricalDistribution) and d["scorer"].choices == ("l1", "taylor")


def test_single_scorer_is_fixed_not_searched():
    space = parse_search_space({"scorers": ["fpgm"]})
    assert "scorer" not in distributions(space, ["g"])
    plan = decode({"ratio.g": 0.2}, space, ["g"], RecoveryConfig())
    assert plan.scorer == "fpgm"


def test_decode_fills_fixed_recovery_and_casts():
    space = parse_search_space({"recovery": {"alpha": 0.5, "temperature": {"choices": [2, 4]}}})
    plan = decode({"ratio.a": 0.3, "recovery.temperature": 2}, space, ["a"], RecoveryConfig(lr=0.02, steps=7))
    assert plan.ratios == {"a": 0.3}
    assert plan.recovery.alpha == 0.5 and plan.recovery.temperature == 2.0 and plan.recovery.lr == 0.02
    assert isinstance(plan.recovery.temperature, float) and plan.recovery.steps == 7


def test_recovery_steps_in_the_search_space_is_refused_naming_the_file_and_field():
    """A trial fine-tunes the study's rung ladder, so a searched (or fixed) steps in the space would be recorded
    but never run: it is refused, saying where the fine-tune budgets are set."""
    import pytest

    from autoprune.errors import ConfigError

    for steps in ({"low": 10, "high": 50}, {"choices": [10, 20]}, 30):
        with pytest.raises(ConfigError) as err:
            parse_search_space({"recovery": {"lr": 0.01, "steps": steps}}, source="space.yaml")
        assert (err.value.source, err.value.field) == ("space.yaml", "recovery.steps")
        assert "rung ladder" in err.value.message and "fidelity.promote_steps" in err.value.message
        assert "\n" not in str(err.value)


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
