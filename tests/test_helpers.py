"""Small shared helpers: the first line of an exception, optional imports with an install hint, the sampler
registry, and errors with empty messages turned into clean one-line errors."""

from __future__ import annotations

import sys

import optuna
import pytest
import torch

from autoprune.config import SamplerConfig
from autoprune.engine.samplers import SAMPLERS, make_sampler
from autoprune.errors import AutopruneError, first_line
from autoprune.models.factory import QuickstartCNN
from autoprune.optional import require
from autoprune.pruning import structural as pruning


# ------------------------------------------------------------------------------------------------- first_line
def test_first_line_is_the_type_and_the_first_non_blank_line():
    assert first_line(ValueError("\n  bad value  \nmore detail")) == "ValueError: bad value"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(OSError("\n \n")) == "OSError"
    assert first_line(KeyError("abcdef"), limit=3) == "KeyError: 'ab"


# --------------------------------------------------------------------------------------------------- require
def test_require_returns_the_module():
    import json

    assert require("json", "report", "the HTML report") is json


def test_require_of_a_missing_module_names_the_extra_to_install():
    with pytest.raises(AutopruneError) as err:
        require("autoprune_no_such_module", "report", "the HTML report")
    assert str(err.value) == "the HTML report needs autoprune_no_such_module: pip install 'autoprune[report]'"


def test_report_plots_without_matplotlib_say_how_to_install_it(monkeypatch, tmp_path):
    from autoprune.deliver import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: importing it raises ImportError
    point = {"accuracy": 0.9, "macs": 10}
    with pytest.raises(AutopruneError, match=r"needs matplotlib: pip install 'autoprune\[report\]'"):
        report.front_png([point], [point], point, tmp_path / "front.png")


def test_onnx_export_without_onnxruntime_is_reported_not_raised(monkeypatch, tmp_path):
    from autoprune.deliver.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it raises ImportError
    out = export_onnx(torch.nn.Linear(4, 3), torch.randn(2, 4), tmp_path / "model.onnx")
    assert out == {"file": None, "error": "the ONNX export check needs onnxruntime: pip install 'autoprune[export]'"}
    assert not (tmp_path / "model.onnx").exists()


# -------------------------------------------------------------------------------------------------- samplers
EXPECTED_SAMPLERS = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                     "random": optuna.samplers.RandomSampler, "gp": optuna.samplers.GPSampler}


def test_the_sampler_registry_holds_the_expected_names():
    # and autoprune's own, which needs cost targets (tests/test_allocation_sampler.py)
    assert SAMPLERS.names() == sorted([*EXPECTED_SAMPLERS, "allocation"])


@pytest.mark.parametrize("name", sorted(EXPECTED_SAMPLERS))
def test_each_registered_sampler_is_built_with_its_class(name):
    sampler = make_sampler(SamplerConfig(name=name, n_startup_trials=3), seed=7)
    assert type(sampler) is EXPECTED_SAMPLERS[name]


def test_tpe_keeps_its_settings():
    sampler = make_sampler(SamplerConfig(name="tpe", n_startup_trials=3), seed=7)
    assert sampler._n_startup_trials == 3 and sampler._multivariate


@pytest.mark.parametrize("name", sorted(EXPECTED_SAMPLERS))
def test_each_registered_sampler_runs_a_seeded_two_objective_study(name):
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        ratio = trial.suggest_float("ratio", 0.0, 0.7, step=0.1)
        scorer = trial.suggest_categorical("scorer", ["l1", "bn_scale"])
        return 1.0 - ratio ** 2 - (0.01 if scorer == "l1" else 0.0), 1.0 - ratio

    def run() -> list[dict]:
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=make_sampler(SamplerConfig(name=name, n_startup_trials=2), seed=3))
        study.optimize(objective, n_trials=4)
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        return [t.params for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert run() == run(), "the same seed gives the same trials"


def test_an_unknown_sampler_is_refused_listing_the_valid_names():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"unknown sampler 'grid'; valid names: allocation, gp, nsga2, random, tpe"):
        SamplerConfig(name="grid")


# --------------------------------------------------------------------- exceptions with an empty message
class _Silent(RuntimeError):
    """An exception whose message is empty: ``str(exc).splitlines()`` is []."""


def _raise_silently(*args, **kwargs):
    raise _Silent()


def test_torch_pruning_failing_to_apply_with_an_empty_message_is_a_one_line_error(monkeypatch):
    model, x = QuickstartCNN(width=4).eval(), torch.randn(2, 1, 8, 8)
    monkeypatch.setattr(pruning.tp.pruner, "MetaPruner", _raise_silently)
    with pytest.raises(AutopruneError) as err:
        pruning.prune_with_plan(model, x, 0.5, "l1")
    assert str(err.value) == "torch-pruning could not apply the plan: _Silent"


def test_torch_pruning_failing_to_trace_with_an_empty_message_is_a_one_line_error(monkeypatch):
    class Untraceable:
        build_dependency = staticmethod(_raise_silently)

    monkeypatch.setattr(pruning.tp, "DependencyGraph", Untraceable)
    with pytest.raises(AutopruneError) as err:
        pruning.build_layout(QuickstartCNN(width=4).eval(), torch.randn(2, 1, 8, 8))
    assert str(err.value) == "torch-pruning cannot trace the model: _Silent"


def test_an_unreadable_pruned_model_with_an_empty_message_is_a_one_line_error(monkeypatch, tmp_path):
    from autoprune.pruning.saving import load_pruned

    path = tmp_path / "model.pt"
    path.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(torch, "load", _raise_silently)
    with pytest.raises(AutopruneError) as err:
        load_pruned(path, QuickstartCNN(width=4))
    assert str(err.value) == f"cannot read pruned model {path}: _Silent"
