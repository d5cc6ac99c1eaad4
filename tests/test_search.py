from __future__ import annotations

import pytest

from autoprune.config import load_study
from autoprune.engine.backends.optuna_backend import run_search
from autoprune.engine.context import prepare
from autoprune.engine.storage import front
from autoprune.engine.trial import run_trial
from autoprune.errors import AutopruneError


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    import yaml

    from tests.conftest import TINY_SPACE, TINY_STUDY

    d = tmp_path_factory.mktemp("search")
    (d / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    (d / "study.yaml").write_text(yaml.safe_dump(dict(TINY_STUDY, workdir=str(d / "run"))))
    return prepare(load_study(d / "study.yaml"))


def test_reference_records_base_and_split(ctx):
    ref = ctx.reference
    assert ref["split"] == "val" and ref["data"]["val_source"] == "train"
    assert ref["trained_here"] is True and 0.5 < ref["accuracy"] <= 1.0
    assert set(ref["groups"]) == {"features.0", "features.3", "features.7"}


def test_trial_records_metrics_timings_and_plan(ctx, tmp_path):
    params = {"ratio.features.0": 0.5, "ratio.features.3": 0.5, "ratio.features.7": 0.0, "scorer": "l1"}
    result = run_trial(ctx, params, seed=1, save_dir=tmp_path)
    assert result.metrics.macs < ctx.reference["macs"]
    assert set(result.timings) == {"prune", "bn_calibration", "finetune", "evaluate", "measure", "total"}
    assert result.plan.ratios == {"features.0": 0.5, "features.3": 0.5, "features.7": 0.0}
    assert result.plan.finetune_images == 5 * 64
    assert result.model_file and result.model_file.startswith(str(tmp_path))


def test_trial_is_deterministic_for_a_seed(ctx):
    params = {"ratio.features.0": 0.3, "ratio.features.3": 0.2, "ratio.features.7": 0.4, "scorer": "bn_scale"}
    a, b = run_trial(ctx, params, seed=7), run_trial(ctx, params, seed=7)
    assert a.metrics["accuracy"] == b.metrics["accuracy"] and a.metrics["macs"] == b.metrics["macs"]


def test_constraint_keeps_infeasible_trials_off_the_front(ctx, tmp_path):
    cap = int(ctx.reference["macs"] * 0.6)
    ctx.study.config.constraints.max_macs = cap
    try:
        out = run_search(ctx, n_trials=5, storage_url=f"sqlite:///{tmp_path / 'c.db'}", study_name="c")
    finally:
        ctx.study.config.constraints.max_macs = None
    entries = front(out.study)
    assert entries, "no trial met the MACs cap: the front is empty and the checks below would pass vacuously"
    assert all(e["macs"] <= cap for e in entries)
    over = [t for t in out.study.trials if t.user_attrs["metrics"]["macs"] > cap]
    assert over, "no trial went over the cap, so nothing showed that infeasible trials are kept off the front"
    assert all(t.number not in {e["trial"] for e in entries} for t in over)


def test_search_stops_when_every_trial_fails(ctx, tmp_path, monkeypatch):
    import autoprune.engine.backends.optuna_backend as backend

    def boom(*args, **kwargs):
        raise FloatingPointError("non-finite loss nan at fine-tune step 0")

    monkeypatch.setattr(backend, "run_trial", boom)
    with pytest.raises(AutopruneError, match="first 5 trials of this run all failed"):
        run_search(ctx, n_trials=10, storage_url=f"sqlite:///{tmp_path / 'f.db'}", study_name="f")
    import optuna

    trials = optuna.load_study(study_name="f", storage=f"sqlite:///{tmp_path / 'f.db'}").trials
    assert len(trials) == 5
    assert all(t.state.name == "FAIL" and "non-finite" in t.user_attrs["fail_reason"] for t in trials)
