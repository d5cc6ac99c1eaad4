"""Trials that fail are recorded FAIL with their reason and the search goes on; interruptions lose nothing.

The failures are real: a user model (tests/failing_models.py) that runs out of CUDA memory, raises its own
exception, turns its loss to NaN, or stops running once torch-pruning has applied the plan.
"""

from __future__ import annotations

import json
import os
import signal

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from autoprune import files
from autoprune.cli import main
from autoprune.config import load_study
from autoprune.engine.backends.optuna_backend import run_search
from autoprune.engine.context import prepare
from autoprune.engine.storage import create_or_load
from autoprune.errors import SearchFailedError
from tests.conftest import TINY_SPACE, TINY_STUDY
from tests.test_distributed import start, trials, wait_for

PRUNED_HARD = {"ratio.features.0": 0.5, "ratio.features.3": 0.0, "ratio.features.7": 0.5, "scorer": "l1"}
PRUNED_MILDLY = {"ratio.features.0": 0.2, "ratio.features.3": 0.2, "ratio.features.7": 0.0, "scorer": "l1"}


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    """A tiny digits study of the failing model; its base model is trained once here and cached for every test."""
    d = tmp_path_factory.mktemp("failures")
    doc = dict(TINY_STUDY, workdir=str(d / "run"), measure=dict(TINY_STUDY["measure"], threads=1),
               model=dict(TINY_STUDY["model"], name="tests.failing_models:fails_when_pruned"))
    (d / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    (d / "study.yaml").write_text(yaml.safe_dump(doc))
    return d / "study.yaml"


@pytest.fixture(scope="module")
def ctx(study_file, one_intra_op_thread):
    return prepare(load_study(study_file))


def enqueued(ctx, url: str, name: str, *plans: dict) -> optuna.Study:
    """The study as autoprune creates it, with ``plans`` queued as its first trials."""
    ost = create_or_load(ctx.study, url, name, optuna.samplers.RandomSampler(), ctx.reference)
    for params in plans:
        ost.enqueue_trial(params)
    return ost


@pytest.mark.parametrize("kind,reason", [
    ("oom", "OutOfMemoryError: CUDA out of memory. Tried to allocate"),
    ("bug", "ModelBug: the user's layer met a shape it does not handle"),
    ("nan", "FloatingPointError: non-finite loss nan at fine-tune step 0"),
    ("view", "AutopruneError: the pruned model fails on forward"),
])
def test_failed_trial_is_recorded_with_its_reason_and_the_search_goes_on(ctx, tmp_path, monkeypatch, kind, reason):
    monkeypatch.setenv("FAILING_MODEL", kind)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    enqueued(ctx, url, kind, PRUNED_HARD, PRUNED_MILDLY, PRUNED_HARD, PRUNED_MILDLY)
    base_params = sum(p.numel() for p in ctx.base.parameters())
    out = run_search(ctx, n_trials=2, storage_url=url, study_name=kind)
    got = out.study.get_trials(deepcopy=False)
    assert [t.state for t in got] == [TrialState.FAIL, TrialState.COMPLETE] * 2
    for t in got[::2]:
        assert t.user_attrs["fail_reason"].startswith(reason), t.user_attrs["fail_reason"]
        assert "Traceback" in t.user_attrs["traceback"]
    assert all(t.user_attrs["metrics"]["macs"] < ctx.reference["macs"] for t in got[1::2])
    assert (out.ran_here, out.failed_here, out.completed) == (4, 2, 2)
    assert sum(p.numel() for p in ctx.base.parameters()) == base_params, "a failed plan leaves the base model whole"


def test_cli_reports_a_cuda_oom_trial_and_finishes_the_budget(ctx, study_file, monkeypatch):
    monkeypatch.setenv("FAILING_MODEL", "oom")
    url = ctx.study.storage_url
    enqueued(ctx, url, "cli-oom", PRUNED_HARD, PRUNED_MILDLY, PRUNED_MILDLY)
    result = CliRunner().invoke(main, ["search", str(study_file), "--study-name", "cli-oom", "--n-trials", "2"])
    assert result.exit_code == 0, result.output
    assert "trial 0 failed: OutOfMemoryError: CUDA out of memory" in result.stderr
    assert "this run: 3 ran, 1 failed" in result.stderr
    states = [t.state for t in trials(url, "cli-oom")]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    status = CliRunner().invoke(main, ["status", str(study_file), "--study-name", "cli-oom"])
    assert "FAIL x1: OutOfMemoryError: CUDA out of memory" in status.output, status.output
    as_json = CliRunner().invoke(main, ["status", str(study_file), "--study-name", "cli-oom", "--json"])
    assert list(json.loads(as_json.output)["fail_reasons"].values()) == [1]


def test_first_trials_all_failing_stop_the_search_with_exit_1(ctx, study_file):
    # An absurd learning rate: every trial's loss overflows on its second fine-tune step.
    result = CliRunner().invoke(main, ["search", str(study_file), "--study-name", "all-fail",
                                       "--set", "recovery.lr=1.0e+30", "--set", "budget.max_initial_failures=2"])
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("autoprune: error:")]
    assert len(lines) == 1 and "first 2 trials of this run all failed" in lines[0], result.stderr[-2000:]
    assert "non-finite loss" in lines[0]
    got = trials(ctx.study.storage_url, "all-fail")
    assert [t.state for t in got] == [TrialState.FAIL] * 2, "stopped after the 2 failures, the budget unspent"
    assert result.exit_code == 1


def test_a_run_that_keeps_failing_between_successes_stops_at_max_failures(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("FAILING_MODEL", "bug")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    enqueued(ctx, url, "mostly-failing", PRUNED_HARD, PRUNED_MILDLY, PRUNED_HARD, PRUNED_HARD, PRUNED_MILDLY)
    monkeypatch.setattr(ctx.study.config.budget, "max_failures", 3)
    with pytest.raises(SearchFailedError, match=r"3 of the 4 trials of this run failed .*ModelBug"):
        run_search(ctx, n_trials=5, storage_url=url, study_name="mostly-failing")
    got = trials(url, "mostly-failing")
    assert [t.state for t in got] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                      TrialState.WAITING]  # the last queued plan is left for a later run


# ----------------------------------------------------------------------------------------------- interruptions
def test_sigterm_stops_the_search_gracefully_and_a_rerun_resumes(ctx, study_file, monkeypatch):
    monkeypatch.setenv("FAILING_MODEL", "slow")  # trials of 40 steps take 2 s or more: a SIGTERM lands inside one
    url, name = ctx.study.storage_url, "sigterm"
    args = ["search", study_file, "--study-name", name, "--n-trials", 2, "--set", "recovery.steps=40"]
    proc = start(*args)

    def fine_tuning_after_a_complete() -> bool:
        """A trial has completed and the next has sampled its plan (its params are stored): it is in its compute."""
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        got = trials(url, name)
        return (any(t.state == TrialState.COMPLETE for t in got) and got[-1].state == TrialState.RUNNING
                and bool(got[-1].params))

    wait_for(fine_tuning_after_a_complete, timeout=240, every=0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "resume with: autoprune search" in err
    stopped = trials(url, name)
    assert stopped[-1].state == TrialState.FAIL and stopped[-1].user_attrs.get("fail_reason") == "interrupted"
    kept = {t.number: t.values for t in stopped if t.state == TrialState.COMPLETE}
    assert kept and TrialState.RUNNING not in [t.state for t in stopped]

    proc = start(*args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    final = trials(url, name)
    assert sum(t.state == TrialState.COMPLETE for t in final) == 2
    assert {n: final[n].values for n in kept} == kept, "completed trials are kept, not rerun"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_optuna_records_a_trial_stops_after_it_with_nothing_left_running(ctx, tmp_path, monkeypatch,
                                                                                        sig):
    """A Ctrl-C that lands inside Optuna's ``tell`` must neither leave the trial RUNNING nor crash the search."""
    from optuna.study import _optimize

    real_tell = _optimize._tell_with_warning
    sent = []

    def tell_hit_by_a_signal(*args, **kwargs):
        if not sent:
            sent.append(sig)
            os.kill(os.getpid(), sig)  # delivered now, in the middle of Optuna's bookkeeping
        return real_tell(*args, **kwargs)

    monkeypatch.setattr(_optimize, "_tell_with_warning", tell_hit_by_a_signal)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    enqueued(ctx, url, "tell", PRUNED_MILDLY, PRUNED_MILDLY, PRUNED_MILDLY)
    previous = signal.getsignal(sig)
    out = run_search(ctx, n_trials=3, storage_url=url, study_name="tell")
    assert out.interrupted and sent == [sig]
    assert [t.state for t in out.study.get_trials(deepcopy=False)] == [TrialState.COMPLETE, TrialState.WAITING,
                                                                       TrialState.WAITING]
    assert signal.getsignal(sig) is previous, "the search restores the signal handlers it replaced"


class Interrupted(BaseException):
    """Stands in for a Ctrl-C or SIGTERM arriving inside a write."""


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_interrupted_atomic_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, where):
    path = tmp_path / "model.pt"
    files.atomic_save({"version": torch.tensor(1)}, path)
    real_save = torch.save

    def half_a_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(10)  # the new file is half written...
        raise Interrupted  # ...when the interrupt arrives

    def interrupted_rename(src, dst):
        raise Interrupted

    if where == "torch.save":
        monkeypatch.setattr(torch, "save", half_a_save)
    else:
        monkeypatch.setattr(os, "replace", interrupted_rename)
    with pytest.raises(Interrupted):
        files.atomic_save({"version": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["version"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file left behind"


def test_interrupted_text_write_leaves_the_old_text(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    files.atomic_write_text(path, '{"old": true}')

    def interrupted_rename(src, dst):
        raise Interrupted

    monkeypatch.setattr(os, "replace", interrupted_rename)
    with pytest.raises(Interrupted):
        files.atomic_write_text(path, '{"new": true}')
    monkeypatch.undo()
    assert path.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_an_export_interrupted_before_its_rename_leaves_the_old_export(tmp_path, monkeypatch, kind):
    from autoprune.deliver.export import export_onnx, export_torchscript

    export = export_torchscript if kind == "torchscript" else export_onnx
    path = tmp_path / f"model.{kind}"
    x = torch.randn(2, 4)
    first = export(torch.nn.Linear(4, 3), x, path)
    assert first["max_abs_diff"] < 1e-5, "checked against the PyTorch model"
    old = path.read_bytes()

    def interrupted_rename(src, dst):
        raise Interrupted

    monkeypatch.setattr(os, "replace", interrupted_rename)
    with pytest.raises(Interrupted):
        export(torch.nn.Linear(4, 3), x, path)
    monkeypatch.undo()
    assert path.read_bytes() == old, "the old export is intact"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file left behind"
