"""Every registered backend through one contract: trials are told as typed records, failures are recorded with
their reason, and a second run resumes the study without recomputing what it holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autoprune.engine.backends import BACKENDS
from autoprune.engine.record import TrialRecord

ROOT = Path(__file__).resolve().parents[1]
# A Ray backend whose trials errored exits 1 after telling them (README: "Errored Ray trials ... make the command
# exit 1"), and its experiment runs as many trials as the budget lacked, errored ones included; the Optuna backend
# records failed trials and goes on until the budget of COMPLETE trials is reached, with exit 0.
EXIT_WITH_FAILED_TRIALS = {"optuna": 0, "ray": 1}
RUNS_UNTIL_BUDGET_COMPLETE = {"optuna": True, "ray": False}


def search(path: Path, backend: str, n_trials: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, FAILING_MODEL="bug", PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "autoprune.cli", "search", str(path), "--backend", backend,
                           "--n-trials", str(n_trials)], capture_output=True, text=True, timeout=400, env=env,
                          cwd=str(ROOT))


def test_every_backend_is_in_the_contract():
    assert set(BACKENDS.names()) == set(EXIT_WITH_FAILED_TRIALS)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS.names())
def test_backend_contract(backend, write_study, tmp_path):
    if backend == "ray":
        pytest.importorskip("ray", reason="the Ray backend needs ray[tune] (pip install -e '.[test]')")
    # Warm starts: uniform 0.1 completes, uniform 0.6 prunes features.0 to under half its width, where the
    # failing model raises ModelBug in training mode: one trial of each kind, whatever the sampler does.
    path = write_study({"model": {"name": "tests.failing_models:fails_when_pruned", "kwargs": {"width": 8},
                                  "base_training": {"epochs": 2, "lr": 0.05, "batch_size": 64}},
                        "budget": {"n_trials": 3, "max_initial_failures": 10, "max_failures": 30},
                        "fidelity": {"promote_steps": 3, "eta": 2}},
                       {"warm_start": {"uniform": [0.1, 0.6]}})
    first = search(path, backend, 3)
    assert first.returncode == EXIT_WITH_FAILED_TRIALS[backend], first.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    records = {t.number: TrialRecord.from_frozen(t) for t in optuna.load_study(study_name="tiny", storage=storage).trials}
    complete = {n: r for n, r in records.items() if r.state == "COMPLETE"}
    failed = [r for r in records.values() if r.state == "FAIL"]
    assert len(complete) == 3 if RUNS_UNTIL_BUDGET_COMPLETE[backend] else len(complete) + len(failed) == 3
    for r in complete.values():
        assert r.completed and set(r.plan.ratios) == {"features.0", "features.3", "features.7"}
        assert r.fidelity.short_steps == 5 and r.timings["finetune"] > 0 and Path(r.model_file).is_file()
        assert r.plan.recovery["steps"] == 5 and r.metrics.macs > 0
    # deferred promotion: two candidates scored, then a third trial continues the better one
    assert any(r.promoted for r in complete.values()) or len(complete) < 3
    assert failed and all(r.failure.reason.startswith("ModelBug: ") for r in failed), [r.failure for r in failed]

    again = search(path, backend, len(complete) + 1)  # resume: a bigger budget, the earlier trials kept as they were
    assert again.returncode in (0, EXIT_WITH_FAILED_TRIALS[backend]), again.stderr[-3000:]
    after = {t.number: TrialRecord.from_frozen(t) for t in optuna.load_study(study_name="tiny", storage=storage).trials}
    more = sum(r.state == "COMPLETE" for r in after.values())
    waiting = min(1, sum(r.state == "WAITING" for r in records.values()))  # a due promotion is taken first
    assert more == len(complete) + 1 if RUNS_UNTIL_BUDGET_COMPLETE[backend] else len(after) == len(records) + 1 - waiting
    for r in after.values():  # continuations ran on this backend: the candidate one rung further
        if r.continues is not None and r.state == "COMPLETE":
            parent = after[r.continues]
            assert r.params == parent.params and r.fidelity.scores[5] == parent.fidelity.scores[5]
            assert sorted(r.fidelity.scores) == [5, 8] and Path(r.model_file).is_file()
    assert any(r.continues is not None and r.state == "COMPLETE" for r in after.values())
    for n, r in complete.items():
        assert after[n] == r
