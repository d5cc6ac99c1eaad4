"""A search from Python on worker processes and on Ray: the model, data and functions travel to the workers
(cloudpickle), and one that cannot travel is an error naming it before anything is written."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
import torch

import autoprune
from autoprune.errors import AutopruneError
from tests.test_api import FAST, _blobs, _net

ROOT = Path(__file__).resolve().parents[1]


def _search(tmp_path, **kw):
    val = _blobs(48, 1)
    x_val, y_val = val.tensors

    def agreement(model):  # a closure, defined here: it travels by value
        return (model(x_val).argmax(1) == y_val).float().mean()

    args = dict(train_data=_blobs(96, 0), val_data=val, targets=[1.5, 2], n_trials=6, progress=False, score=agreement,
                storage=f"sqlite:///{tmp_path / 'api.db'}", workdir=str(tmp_path / "run"), **FAST)
    return autoprune.search(_net(), **{**args, **kw})


@pytest.mark.slow
def test_two_local_worker_processes_run_a_search_from_python(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the test module's helpers are imported by reference, as a user's own modules are
    result = _search(tmp_path, workers=2)
    trials = result.study.trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and result.front and result.score_name == "agreement"
    logs = sorted((tmp_path / "run" / "logs").glob("worker-*.log"))
    assert len(logs) == 2 and all("done" in log.read_text() for log in logs), [log.read_text()[-500:] for log in logs]
    assert not (tmp_path / "run" / "given-workers.pkl").exists()  # the spec file is removed


def test_a_ray_worker_prepares_a_search_from_python_from_its_spec(tmp_path):
    """What a Ray worker does with the spec the driver sends (the Ray backend itself is tested in test_ray.py):
    the objects unpickled and the study prepared from them, the score closure scoring as in the driver."""
    pytest.importorskip("ray", reason="needs ray[tune]")
    from autoprune.api.search import build_study, hand_over
    from autoprune.engine.backends import ray_backend
    from autoprune.engine.context import prepare

    val = _blobs(48, 1)
    x_val, y_val = val.tensors
    given = hand_over(_net(), None, (_blobs(96, 0), val, None),
                      lambda m: (m(x_val).argmax(1) == y_val).float().mean(), None, None, travels=True)
    study = build_study(given.model, given.data, targets=[1.5, 2], n_trials=4, storage=None, study_name="ray-spec",
                        seed=0, space=None, settings={"workdir": str(tmp_path / "run"), **FAST})
    ctx = prepare(study, "cpu", given=given)
    spec = ray_backend._worker_spec(ctx, "cpu", 1.0, tmp_path / "run")
    ray_backend._WORKER_CTX.clear()
    worker = ray_backend._worker_context(spec)
    assert worker is not ctx and worker.given is not None and worker.score_name == "score"
    assert worker.groups == ctx.groups and torch.equal(worker.base[0].weight, ctx.base[0].weight)
    assert worker.score(worker.base) == ctx.score(ctx.base)  # the score closure travelled with its data


def test_a_function_that_cannot_travel_is_an_error_naming_it_before_anything_is_written(tmp_path):
    lock = threading.Lock()

    def guarded(model):  # holds a lock: it cannot be pickled
        with lock:
            return 0.5

    with pytest.raises(AutopruneError, match="score: score cannot travel to worker processes .*TypeError"):
        _search(tmp_path, workers=2, score=guarded)
    with pytest.raises(AutopruneError, match="loss: loss cannot travel"):
        _search(tmp_path, backend="ray", loss=lambda out, teacher, y: lock and torch.nn.functional.cross_entropy(out, y))
    assert not (tmp_path / "api.db").exists() and not (tmp_path / "run").exists()
    assert _search(tmp_path, score=guarded).front  # in this process it need not travel
