"""The typed trial record: round trips at the ask/tell boundary, and studies written before it still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

from autoprune.cli import main
from autoprune.config import ConstraintsConfig, RecoveryConfig
from autoprune.engine.record import Failure, Fidelity, Metrics, PlanRecord, TrialRecord
from autoprune.engine.storage import StudyAttrs

LEGACY = Path(__file__).parent / "data" / "legacy_study"


def _record() -> TrialRecord:
    return TrialRecord(Metrics(0.91, 1200, 300, 0.25), PlanRecord("l1", {"a": 0.3, "b": 0.5}, 8, ("layer1.0",),
                                                                  {"lr": 0.02, "momentum": 0.8, "steps": 20}, 30, 1920),
                       Fidelity({20: 0.85, 30: 0.91}, {20: 500, 30: 1000}), {"prune": 0.1, "total": 1.0}, "/m.pt")


def test_a_record_survives_the_user_attrs_and_json_round_trips():
    rec = _record()
    back = TrialRecord.from_user_attrs(json.loads(json.dumps(rec.to_user_attrs())))
    assert back == rec
    assert TrialRecord.from_json(rec.to_json()) == rec
    assert (rec.fidelity.short_steps, rec.fidelity.steps, rec.fidelity.promoted) == (20, 30, True)


def test_a_records_target_is_the_one_its_plan_was_placed_on():
    rec = _record()
    assert rec.target is None and TrialRecord(failure=Failure("x")).target is None
    targeted = TrialRecord(rec.metrics, PlanRecord("l1", {"a": 0.3}, target=2.0))
    assert targeted.target == 2.0 and TrialRecord.from_json(targeted.to_json()).target == 2.0


def test_a_continuation_and_a_baseline_round_trip_their_lineage():
    """The trial a record continues and the baseline it is are the record's own: written by to_user_attrs (so a
    Ray worker's record carries them to the driver) and read back."""
    from dataclasses import replace

    rec = replace(_record(), continues=3, warm_start="uniform")
    attrs = json.loads(json.dumps(rec.to_user_attrs()))
    assert (attrs["continues"], attrs["warm_start"]) == (3, "uniform")
    assert TrialRecord.from_user_attrs(attrs) == rec and TrialRecord.from_json(rec.to_json()) == rec
    assert "continues" not in _record().to_user_attrs() and "warm_start" not in _record().to_user_attrs()


def test_objective_short_point_and_constraints_come_from_the_typed_fields():
    rec = _record()
    assert rec.objective_values(["accuracy", "macs"]) == [0.91, 1200]
    assert rec.short_point(["accuracy", "macs"]) == [0.85, 1200]
    c = rec.constraint_values(ConstraintsConfig(min_accuracy=0.9, max_macs=1000))
    assert c == {"min_accuracy": pytest.approx(-0.01), "max_macs": 200}
    with pytest.raises(KeyError, match="unknown metric 'accurracy'"):
        rec.metrics["accurracy"]


def test_recorded_recovery_settings_override_the_study_defaults():
    settings = _record().plan.recovery_settings(RecoveryConfig(lr=0.01, momentum=0.9, temperature=3.0))
    assert (settings.lr, settings.momentum, settings.steps, settings.temperature) == (0.02, 0.8, 20, 3.0)


def test_a_failure_record_holds_only_the_failure():
    attrs = TrialRecord(failure=Failure("ValueError: bad", "Traceback ...")).to_user_attrs()
    assert attrs == {"fail_reason": "ValueError: bad", "traceback": "Traceback ..."}
    back = TrialRecord.from_user_attrs(attrs)
    assert back.failure == Failure("ValueError: bad", "Traceback ...") and not back.completed


def test_failure_from_exception_survives_an_empty_message():
    try:
        raise RuntimeError("")
    except RuntimeError as exc:
        failure = Failure.from_exception(exc)
    assert failure.reason == "RuntimeError" and "RuntimeError" in failure.traceback


# ----------------------------------------------------------------------------- a study written by 9607b2e
@pytest.fixture
def legacy(tmp_path) -> Path:
    """The legacy study copied to tmp_path (SQLite writes beside its file), its workdir there too."""
    for name in ("study.yaml", "space.yaml", "study.db"):
        shutil.copy(LEGACY / name, tmp_path / name)
    study = yaml.safe_load((tmp_path / "study.yaml").read_text())
    study["workdir"] = str(tmp_path / "run")
    study["storage"] = {"url": f"sqlite:///{tmp_path / 'study.db'}"}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    return tmp_path / "study.yaml"


def _legacy_trials(path: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    url = yaml.safe_load(path.read_text())["storage"]["url"]
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_every_trial_of_a_legacy_study_reads_back_as_a_record(legacy):
    trials = _legacy_trials(legacy, "legacy") + _legacy_trials(legacy, "legacy_fail")
    records = [TrialRecord.from_frozen(t) for t in trials]
    complete = [r for r in records if r.state == "COMPLETE"]
    failed = [r for r in records if r.state == "FAIL"]
    assert len(complete) == 9 and len(failed) == 10
    for r, t in zip(records, trials):
        if r.state == "COMPLETE":
            assert r.completed and r.plan.scorer and set(r.plan.ratios) and r.fidelity.short_steps == 5
            assert r.metrics.accuracy == t.user_attrs["metrics"]["accuracy"]
            # the record writes back everything the old code stored, as it stored it (and adds per-rung scores)
            new = r.to_user_attrs()
            for key, old in t.user_attrs.items():
                if key == "fidelity":
                    assert {k: new[key][k] for k in old} == old
                elif key != "warm_start":
                    assert new[key] == old, key
        else:
            assert r.failure.reason.startswith("ModelBug:") and not r.completed
    assert sum(r.promoted for r in complete) >= 1


def test_status_pareto_and_select_read_a_legacy_study(legacy):
    runner = CliRunner()
    status = runner.invoke(main, ["status", str(legacy), "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["trials"]["COMPLETE"] == 5
    front = runner.invoke(main, ["pareto", str(legacy), "--json"])
    assert front.exit_code == 0, front.output
    entries = json.loads(front.stdout)["front"]
    assert entries and all(e["plan"]["scorer"] == "l1" and e["fidelity"]["short_steps"] == 5 for e in entries)
    pick = runner.invoke(main, ["select", str(legacy), "--knee", "--json"])
    assert pick.exit_code == 0, pick.output
    assert json.loads(pick.stdout)["trial"] in {e["trial"] for e in entries}


def test_study_attributes_read_back_typed_with_one_fallback_for_the_objectives(legacy):
    bare = optuna.create_study(directions=["maximize", "minimize"])
    assert StudyAttrs.from_study(bare) == StudyAttrs() and StudyAttrs().objectives == ("accuracy", "macs")
    for key, value in (("objectives", ["accuracy", "latency_ms"]), ("hosts", ["a", "b"]), ("base", {"macs": 5}),
                       ("fingerprint", "f"), ("fingerprints", {"model": "m"}), ("warm_started", 3)):
        bare.set_user_attr(key, value)
    assert StudyAttrs.from_study(bare) == StudyAttrs(("accuracy", "latency_ms"), "f", {"model": "m"}, {"macs": 5},
                                                     ("a", "b"), 3)
    stored = optuna.load_study(study_name="legacy", storage=yaml.safe_load(legacy.read_text())["storage"]["url"])
    attrs = StudyAttrs.from_study(stored)
    assert attrs.objectives == tuple(stored.user_attrs["objectives"]) and attrs.base == stored.user_attrs["base"]


@pytest.mark.slow
def test_a_legacy_trial_whose_model_file_is_gone_retrains_from_its_recorded_plan(legacy, tmp_path):
    """The trial's saved model pointed into a folder that no longer exists: retrain re-applies the recorded
    plan (and checks the parameter count), trains with the recorded recovery settings, and reports."""
    trials = {t.number: t for t in _legacy_trials(legacy, "legacy")}
    assert not Path(trials[0].user_attrs["model_file"]).exists()
    out = tmp_path / "final"
    result = CliRunner().invoke(main, ["retrain", str(legacy), "--trial", "0", "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["params"] == trials[0].user_attrs["metrics"]["params"]
    assert report["search"]["plan"]["recovery"] == trials[0].user_attrs["plan"]["recovery"]


@pytest.mark.slow
def test_a_legacy_study_resumes_with_a_larger_budget(legacy):
    """Its fingerprint still matches (settings added since, such as allocation, do not change it), so the same
    search command continues it: the old trials stay as they were and one more runs."""
    before = {t.number: t.user_attrs for t in _legacy_trials(legacy, "legacy")}
    result = CliRunner().invoke(main, ["search", str(legacy), "--n-trials", "6"])
    assert result.exit_code == 0, result.output
    after = _legacy_trials(legacy, "legacy")
    assert sum(t.state.name == "COMPLETE" for t in after) == 6
    assert all(t.user_attrs == before[t.number] for t in after if t.number in before)
    new = TrialRecord.from_frozen(max((t for t in after if t.state.name == "COMPLETE"), key=lambda t: t.number))
    assert new.completed and new.plan.scorer
