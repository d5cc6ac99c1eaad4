from __future__ import annotations

import json

import optuna
import pytest
from click.testing import CliRunner

from autoprune.cli import main


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny digits study searched to 4 complete trials (shared by the tests below)."""
    import yaml

    from tests.conftest import TINY_SPACE, TINY_STUDY

    d = tmp_path_factory.mktemp("cli")
    study = dict(TINY_STUDY, workdir=str(d / "run"))
    (d / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    path = d / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = run("search", path)
    assert result.exit_code == 0, result.output
    return path, result


def test_search_prints_front_table(searched):
    _, result = searched
    assert "Pareto front" in result.stderr
    assert "base" in result.stderr


def test_status_json_shape(searched):
    path, _ = searched
    result = run("status", path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["trials"]) == {"COMPLETE", "FAIL", "RUNNING", "PRUNED", "WAITING"}
    assert data["trials"]["COMPLETE"] == 4
    assert data["time_s"]["finetune"] > 0


def test_pareto_json_shape(searched):
    path, _ = searched
    result = run("pareto", path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["objectives"] == {"accuracy": "maximize", "macs": "minimize"}
    for entry in [data["base"], *data["front"]]:
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert isinstance(entry["macs"], int) and isinstance(entry["params"], int)
        assert isinstance(entry["latency_ms"], float)
    assert data["front"], "a front of at least one trial"
    assert data["base"]["latency_backend"] == "torch" and isinstance(data["base"]["latency_reliable"], bool)
    assert data["base"]["latency_dispersion"] >= 0
    for entry in data["front"]:
        assert isinstance(entry["trial"], int)
        assert set(entry["config"]) >= {"ratio.features.0", "ratio.features.3", "ratio.features.7"}
    # non-dominated: no front entry is dominated by another
    front = data["front"]
    for a in front:
        assert not any(b["accuracy"] >= a["accuracy"] and b["macs"] <= a["macs"] and
                       (b["accuracy"] > a["accuracy"] or b["macs"] < a["macs"]) for b in front)


def test_evaluate_base_and_trial_json(searched):
    path, _ = searched
    base = json.loads(run("evaluate", path, "--base", "--json").stdout)
    assert base["model"] == "base" and base["split"] == "val"
    front = json.loads(run("pareto", path, "--json").stdout)["front"]
    entry = front[0]
    result = run("evaluate", path, "--trial", entry["trial"], "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["macs"] == entry["macs"] and out["params"] == entry["params"]
    assert out["accuracy"] == pytest.approx(entry["accuracy"], abs=1e-9)  # the saved model is the trial's model
    test = json.loads(run("evaluate", path, "--trial", entry["trial"], "--split", "test", "--json").stdout)
    assert test["split"] == "test" and test["images"] == base["data"]["sizes"]["test"]
    for o in (base, out):  # timed paired with the base on the study's backend
        assert o["latency_backend"] == "torch" and o["latency_ms"] > 0 and o["base_latency_ms"] > 0
        assert isinstance(o["latency_reliable"], bool) and o["latency_dispersion"] >= 0
        assert o["latency_speedup"] == pytest.approx(1 / o["latency_ratio"])


@pytest.fixture
def noisy_latency(monkeypatch):
    """paired_latency replaced by one that records its arguments and says the machine was contended."""
    from autoprune.metrics import latency

    calls = []

    def fake(model, base, x, repeats=20, warmup=5, backend="torch"):
        calls.append((model, base, backend))
        return latency.LatencyResult(0.5, 1.0, 0.4, 0.9, False, backend, 80)

    monkeypatch.setattr(latency, "paired_latency", fake)
    return calls


def test_evaluate_marks_an_unreliable_paired_latency(searched, noisy_latency):
    path, _ = searched
    trial = json.loads(run("pareto", path, "--json").stdout)["front"][0]["trial"]
    out = json.loads(run("evaluate", path, "--trial", trial, "--json").stdout)
    assert (out["latency_ms"], out["base_latency_ms"], out["latency_ratio"]) == (0.5, 1.0, 0.4)
    assert out["latency_speedup"] == pytest.approx(2.5) and out["latency_reliable"] is False
    assert out["latency_dispersion"] == 0.9 and out["latency_backend"] == "torch" and out["latency_pairs"] == 80
    result = run("evaluate", path, "--trial", trial)
    assert result.exit_code == 0, result.output
    assert "0.500? ms" in result.stderr and "2.50x? faster than the base" in result.stderr
    assert "latency unreliable" in result.stderr
    model, base, backend = noisy_latency[-1]
    assert model is not base and backend == "torch"


def test_evaluate_base_is_the_base_paired_with_itself(searched, noisy_latency):
    path, _ = searched
    result = run("evaluate", path, "--base")
    assert result.exit_code == 0, result.output
    assert "paired with itself" in result.stderr and "faster" not in result.stderr
    assert "0.500? ms" in result.stderr and "dispersion 0.900" in result.stderr
    model, base, _ = noisy_latency[-1]
    assert model is base


def test_status_counts_the_trials_whose_latency_is_unreliable(searched, tmp_path):
    import dataclasses
    import sqlite3

    from autoprune.engine.record import TrialRecord

    path, _ = searched
    src, dst = sqlite3.connect(path.parent / "run" / "study.db"), sqlite3.connect(tmp_path / "copy.db")
    src.backup(dst)  # a copy with what the write-ahead log holds; the shared study stays as it is
    src.close()
    dst.close()
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    first = run("status", path, "--storage", url, "--json")
    assert first.exit_code == 0, first.output
    before = json.loads(first.stdout)["latency_unreliable"]
    ost = optuna.load_study(study_name="tiny", storage=url)
    done = next(t for t in ost.trials if t.state.name == "COMPLETE")
    r = TrialRecord.from_frozen(done)
    noisy = dataclasses.replace(r, metrics=dataclasses.replace(r.metrics, latency_reliable=False))
    ost.add_trial(optuna.trial.create_trial(params=done.params, distributions=done.distributions, values=done.values,
                                            user_attrs=noisy.to_user_attrs()))
    assert json.loads(run("status", path, "--storage", url, "--json").stdout)["latency_unreliable"] == before + 1
    assert f"latency unreliable in {before + 1} trial(s)" in run("status", path, "--storage", url).stderr


def test_evaluate_needs_exactly_one_target(searched):
    path, _ = searched
    result = run("evaluate", path, "--base", "--trial", "0")
    assert result.exit_code == 2
    assert "exactly one of --base or --trial" in result.stderr


def test_evaluate_unknown_trial_is_exit_2(searched):
    path, _ = searched
    result = run("evaluate", path, "--trial", "999")
    assert result.exit_code == 2 and "no trial 999" in result.stderr


def test_resume_keeps_trials_and_reaches_new_budget(write_study):
    path = write_study({"budget": {"n_trials": 2}})
    assert run("search", path).exit_code == 0
    storage = f"sqlite:///{path.parent / 'run' / 'study.db'}"
    before = {t.number: t.values for t in optuna.load_study(study_name="tiny", storage=storage).trials}
    result = run("search", path, "--n-trials", "4")
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    for number, values in before.items():
        assert trials[number].values == values  # earlier trials kept, not recomputed
    # A third run with the same budget runs nothing.
    result = run("search", path, "--n-trials", "4")
    assert result.exit_code == 0 and "this run: 0 ran" in result.stderr


def test_config_error_is_one_line_exit_2_and_writes_nothing(write_study, tmp_path):
    path = write_study({"recovery": {"stepz": 3}})
    result = run("search", path)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "recovery.stepz" in lines[0] and str(path) in lines[0]
    assert not (tmp_path / "run").exists()


def test_unreachable_storage_is_exit_2(write_study):
    path = write_study()
    result = run("status", path, "--storage", "postgresql://nobody@127.0.0.1:1/none")
    assert result.exit_code == 2
    assert "cannot open storage" in result.stderr


def test_bad_set_override_is_exit_2(write_study):
    result = run("status", write_study(), "--set", "recovery")
    assert result.exit_code == 2 and "--set expects KEY=VALUE" in result.stderr


def test_study_with_different_objectives_is_refused(write_study):
    path = write_study({"budget": {"n_trials": 1}})
    assert run("search", path).exit_code == 0
    other = write_study({"budget": {"n_trials": 1}, "objectives": ["accuracy", "params"]})
    result = run("search", other)
    assert result.exit_code == 2 and "objectives" in result.stderr


def test_study_name_flag_selects_the_study_everywhere(write_study):
    path = write_study({"budget": {"n_trials": 1}})
    assert run("search", path, "--study-name", "other").exit_code == 0
    data = json.loads(run("status", path, "--study-name", "other", "--json").stdout)
    assert data["trials"]["COMPLETE"] == 1
    result = run("status", path, "--json")
    assert result.exit_code == 2 and "no study named 'tiny'" in result.stderr


# ------------------------------------------------------------------ flags, --set and secrets in storage URLs
@pytest.mark.parametrize("key,value,expected", [
    ("storage.url", "sqlite:///{tmp}/elsewhere.db", "elsewhere.db"),
    ("storage.study_name", "another-name", "no study named 'another-name'"),
])
def test_set_on_a_storage_field_is_not_dropped(write_study, tmp_path, key, value, expected):
    path = write_study()
    result = run("status", path, "--set", f"{key}={value.format(tmp=tmp_path)}")
    assert result.exit_code == 2
    assert expected in result.stderr, result.stderr


def test_set_model_checkpoint_and_data_root_are_not_dropped(write_study, tmp_path):
    path = write_study()
    result = run("evaluate", path, "--base", "--set", f"model.checkpoint={tmp_path / 'missing-weights.pt'}")
    assert result.exit_code == 2 and "missing-weights.pt" in result.stderr, result.stderr
    cifar = write_study({"data": {"name": "cifar10", "root": str(tmp_path / "from-the-file")}})
    result = run("evaluate", cifar, "--base", "--set", f"data.root={tmp_path / 'from-set'}")
    assert result.exit_code == 2 and "from-set" in result.stderr, result.stderr


def test_a_flag_still_overrides_set(write_study, tmp_path):
    path = write_study()
    result = run("status", path, "--set", f"storage.url=sqlite:///{tmp_path}/from-set.db",
                 "--storage", f"sqlite:///{tmp_path}/from-flag.db")
    assert "from-flag.db" in result.stderr and "from-set.db" not in result.stderr


def test_the_storage_url_may_come_from_the_environment(write_study, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_STORAGE", f"sqlite:///{tmp_path}/from-env.db")
    result = run("status", write_study())
    assert result.exit_code == 2 and "from-env.db" in result.stderr, result.stderr


def test_a_storage_password_is_never_printed_in_an_error(write_study):
    url = "postgresql://ann:s3cret-pw@127.0.0.1:1/autoprune"  # nothing listens on port 1
    result = run("status", write_study(), "--storage", url)
    assert result.exit_code == 2
    assert "cannot open storage" in result.stderr and "s3cret-pw" not in result.output
    assert "ann:***@127.0.0.1:1" in result.stderr


def test_retrain_without_plotly_fails_before_training(write_study, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly now raises ImportError
    result = run("retrain", write_study(), "--trial", "0")
    assert result.exit_code == 2
    assert "pip install 'autoprune[report]'" in result.stderr and "no study named" not in result.stderr
