"""The Ray backend on a real two-node Ray cluster started on this machine (no mocks)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("ray", reason="the Ray backend's tests need ray[tune] (pip install -e '.[test]')")

from tests.test_distributed import trials, wait_for  # noqa: E402 (after the skip: the helpers need no Ray)

RAY = str(Path(sys.executable).parent / "ray")
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=400, env=ENV)


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head`` on a free port (Redis holds 6379) plus a second node joining it, one CPU each."""
    temp = tempfile.mkdtemp(prefix="apray", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    port = free_port()
    head = subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir", temp,
                           "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        node = subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1"],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert node.returncode == 0, node.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_two_node_cluster_runs_trials_on_both_nodes_into_optuna_storage(write_study, tmp_path, cluster):
    path = write_study({"budget": {"n_trials": 4}, "recovery": {"steps": 40, "batch_size": 64}})
    result = cli("search", path, "--backend", "ray", "--ray-address", cluster, "--workers", 2, "--cpus-per-trial", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}").trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["ray"]["node"] for t in trials}) == 2, "trials ran on both nodes"
    assert all(t.user_attrs["metrics"]["macs"] > 0 and t.user_attrs["timings"]["finetune"] > 0 for t in trials)
    # status and pareto read the same storage as with the Optuna backend
    status = cli("status", path, "--json")
    assert status.returncode == 0 and '"COMPLETE": 4' in status.stdout


def test_errored_ray_trials_are_reported_and_recorded(write_study, tmp_path, cluster):
    path = write_study({"budget": {"n_trials": 2}, "recovery": {"steps": 30, "batch_size": 64, "lr": 1.0e6}})
    result = cli("search", path, "--backend", "ray", "--ray-address", cluster, "--workers", 2)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Ray trial(s) errored" in result.stderr and "non-finite loss" in result.stderr
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}").trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("non-finite loss" in t.user_attrs["fail_reason"] for t in failed)


def test_sigint_stops_ray_search_and_rerun_restores_the_experiment(write_study, tmp_path):
    path = write_study({"budget": {"n_trials": 3}, "recovery": {"steps": 300, "batch_size": 64}})
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", str(path), "--backend", "ray"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

    def a_trial_is_running() -> bool:
        """Tune has asked the searcher for a trial (RUNNING in the storage): the driver is inside ``fit()``."""
        assert proc.poll() is None, f"the search ended before any trial ran: {proc.communicate()[1][-3000:]}"
        return any(t.state == TrialState.RUNNING for t in trials(url, "tiny"))

    wait_for(a_trial_is_running, timeout=300, every=0.2, proc=proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, f"the SIGINT during a trial did not interrupt the search:\n{err[-3000:]}"
    assert "resume with: autoprune search" in err
    assert list((tmp_path / "run" / "ray_results").glob("*.unfinished")), "the experiment is marked to restore"
    result = cli("search", path, "--backend", "ray")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restoring the unfinished Ray experiment" in " ".join(result.stderr.split()), result.stderr[-3000:]
    final = trials(url, "tiny")
    assert sum(t.state == TrialState.COMPLETE for t in final) == 3
    assert not [t for t in final if t.state == TrialState.RUNNING]
    assert not list((tmp_path / "run" / "ray_results").glob("*.unfinished"))
