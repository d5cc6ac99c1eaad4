from __future__ import annotations

import pytest
import yaml

from autoprune.config import load_search_space, load_study, parse_search_space
from autoprune.errors import ConfigError
from tests.conftest import ROOT


def test_shipped_studies_validate():
    for path in sorted((ROOT / "studies").glob("*.yaml")):
        study = load_study(path)
        assert study.space_path is not None and study.space_path.is_file()


def test_shipped_search_spaces_validate():
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        assert load_search_space(path).scorers


def test_unknown_key_names_file_and_field(write_study):
    path = write_study({"recovery": {"steps": 5, "stepz": 3}})
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(path) in str(err.value)
    assert "recovery.stepz" in str(err.value)
    assert "unknown key" in str(err.value)


def test_wrong_type_names_field(write_study):
    with pytest.raises(ConfigError, match=r"budget\.n_trials"):
        load_study(write_study({"budget": {"n_trials": "many"}}))


def test_out_of_range_value_names_field(write_study):
    with pytest.raises(ConfigError, match=r"recovery\.alpha"):
        load_study(write_study({"recovery": {"alpha": 1.5}}))


def test_missing_required_field(write_study):
    path = write_study()
    data = yaml.safe_load(path.read_text())
    del data["model"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"model: required field is missing"):
        load_study(path)


@pytest.mark.parametrize("ratio", [{"low": 0.0, "high": 1.0}, {"low": -0.1, "high": 0.5}, {"low": 0.6, "high": 0.2}])
def test_bad_ratio_range_rejected(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        parse_search_space({"ratio": ratio}, source="space.yaml")


def test_unknown_scorer_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        parse_search_space({"scorers": ["l1", "magic"]}, source="space.yaml")
    assert "scorers" in str(err.value) and "magic" in str(err.value) and "taylor" in str(err.value)


def test_empty_scorer_list_rejected():
    with pytest.raises(ConfigError, match="scorers"):
        parse_search_space({"scorers": []}, source="space.yaml")


def test_objectives_must_include_accuracy(write_study):
    with pytest.raises(ConfigError, match="objectives"):
        load_study(write_study({"objectives": ["macs", "latency_ms"]}))


def test_missing_search_space_file(write_study):
    with pytest.raises(ConfigError, match="search_space"):
        load_study(write_study({"search_space": "nope.yaml"}))


def test_invalid_yaml_is_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(path)


def test_overrides_apply_before_validation(write_study):
    study = load_study(write_study(), {"recovery.steps": 7, "model.checkpoint": None})
    assert study.config.recovery.steps == 7
    assert study.config.model.checkpoint is None


def test_default_storage_is_sqlite_in_workdir(write_study, tmp_path):
    study = load_study(write_study())
    assert study.storage_url == f"sqlite:///{(tmp_path / 'run' / 'study.db').as_posix()}"


def test_fingerprint_ignores_budget_but_not_space(write_study):
    a = load_study(write_study()).fingerprint()
    b = load_study(write_study({"budget": {"n_trials": 99}})).fingerprint()
    c = load_study(write_study(space_overrides={"scorers": ["l1"]})).fingerprint()
    assert a == b
    assert a != c


def test_unknown_data_set_names_the_field_and_lists_the_registered_ones(write_study):
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"data": {"name": "digitz"}}))
    msg = str(err.value)
    assert "data.name" in msg
    assert "unknown data set 'digitz'; valid names: cifar10, cifar100, digits, imagefolder" in msg


def test_unknown_sampler_names_the_field_and_lists_the_registered_ones(write_study):
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"sampler": {"name": "grid"}}))
    msg = str(err.value)
    assert "sampler.name" in msg and "unknown sampler 'grid'; valid names:" in msg
    assert all(name in msg for name in ("nsga2", "random", "tpe"))


def test_every_registered_sampler_validates(write_study):
    from autoprune.engine.samplers import SAMPLERS

    for name in SAMPLERS:
        targets = {"targets": {"macs_reduction": [2]}} if name == "allocation" else {}
        assert load_study(write_study({"sampler": {"name": name}, **targets})).config.sampler.name == name


def test_the_allocation_sampler_without_targets_is_refused_at_load(write_study):
    with pytest.raises(ConfigError, match="sampler 'allocation' searches allocations placed on cost targets: add targets"):
        load_study(write_study({"sampler": {"name": "allocation"}}))


def test_the_config_wing_knows_exactly_the_registered_sampler_names():
    from autoprune.config import SAMPLER_NAMES
    from autoprune.engine.samplers import SAMPLERS

    assert sorted(SAMPLER_NAMES) == SAMPLERS.names()


def test_a_study_whose_search_space_sets_recovery_steps_does_not_load(write_study, tmp_path):
    """Fine-tune budgets are the study's rung ladder: a steps range in the search space would be sampled and
    recorded but never run, so loading refuses it in one line naming the space file and recovery.steps."""
    path = write_study(space_overrides={"recovery": {"steps": {"low": 10, "high": 50}}})
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{tmp_path / 'space.yaml'}: recovery.steps: ")
    assert "fidelity.promote_steps" in str(err.value) and "\n" not in str(err.value)
