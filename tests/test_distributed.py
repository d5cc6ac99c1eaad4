"""Several workers, PostgreSQL, kills and interrupts: real processes against real storages, no mocks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

PG_URL = os.environ.get("AUTOPRUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autoprune.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def trials(url: str, name: str):
    if url.startswith("sqlite:///") and not os.path.exists(url[len("sqlite:///"):]):
        raise KeyError("no database yet")
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def wait_for(predicate, timeout: float = 120, every: float = 0.3, proc: subprocess.Popen | None = None,
             workdir=None):
    """Poll ``predicate``; on timeout, fail with what the search process and its workers said."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return True
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the study or its schema does not exist yet
            pass
        time.sleep(every)
    said = ""
    if proc is not None:
        proc.kill()
        said += "\nsearch stderr:\n" + proc.communicate()[1][-3000:]
    if workdir is not None:
        for log in sorted((workdir / "logs").glob("*.log")):
            said += f"\n{log.name}:\n" + log.read_text(errors="replace")[-2000:]
    raise AssertionError(f"condition not reached in {timeout} s{said}")


def _listening(url: str) -> bool:
    """Whether anything accepts a TCP connection at the URL's host and port (False for a socket-only URL)."""
    parts = urlsplit(url)
    if not parts.hostname or parts.hostname.startswith("/"):
        return False
    try:
        socket.create_connection((parts.hostname, parts.port or 5432), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def postgres():
    """The PostgreSQL URL; skips only when no server is there to connect to. A server that answers but refuses
    (authentication, a missing database) or any other error fails the tests that need it."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        if _listening(PG_URL):
            raise
        pytest.skip(f"no PostgreSQL answers at {PG_URL}: {' '.join(str(exc).split())}")
    return PG_URL


@pytest.fixture
def pg_study(postgres):
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield postgres, name
    try:
        optuna.delete_study(study_name=name, storage=postgres)
    except KeyError:
        pass


def test_three_workers_on_postgres_make_exactly_the_budget(write_study, pg_study):
    url, name = pg_study
    path = write_study({"budget": {"n_trials": 12}})
    result = cli("search", path, "--storage", url, "--study-name", name, "--workers", 3)
    assert result.returncode == 0, result.stderr[-2000:]
    done = [t for t in trials(url, name) if t.state == TrialState.COMPLETE]
    assert len(done) == 12
    assert len({t.number for t in done}) == 12
    logs = [(path.parent / "run" / "logs" / f"worker-{i}.log").read_text() for i in range(3)]
    assert all("COMPLETE" in log for log in logs), "every worker ran trials"
    front = json.loads(cli("pareto", path, "--storage", url, "--study-name", name, "--json").stdout)["front"]
    assert front and {e["trial"] for e in front} <= {t.number for t in done}
    plans = [t.user_attrs["plan"]["latency_method"] for t in done]
    assert all(p.startswith("exclusive") for p in plans)


def test_killed_worker_trial_is_failed_and_retried(write_study, tmp_path, monkeypatch):
    # pruned copies that sleep 50 ms a training step: a 40-step trial lasts 2 s or more (long enough to be killed
    # mid-trial: the kill follows the first sight of a RUNNING trial within a poll of 0.3 s) while leaving the
    # cores to the other tests
    monkeypatch.setenv("FAILING_MODEL", "slow")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    path = write_study({"budget": {"n_trials": 3}, "recovery": {"steps": 40, "batch_size": 64},
                        "storage": {"heartbeat_interval": 1, "grace_period": 3},
                        "model": {"name": "tests.failing_models:fails_when_pruned", "kwargs": {"width": 8},
                                  "base_training": {"epochs": 4, "lr": 0.05, "batch_size": 64}}})
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    proc = start("search", path)
    wait_for(lambda: any(t.state == TrialState.RUNNING for t in trials(url, "tiny")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = next(t for t in trials(url, "tiny") if t.state == TrialState.RUNNING)
    time.sleep(3.5)  # past the grace period: the killed trial's heartbeat is stale
    result = cli("search", path)
    assert result.returncode == 0, result.stderr[-2000:]
    final = trials(url, "tiny")
    assert final[killed.number].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in final) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = [t for t in final if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert retried and retried[0].params == killed.params and retried[0].state == TrialState.COMPLETE


def test_sigint_stops_gracefully_and_rerun_completes(write_study, tmp_path, monkeypatch):
    # two workers: the parent forwards SIGINT to both (one process alone stops through the same handler as on
    # SIGTERM, tests/test_failures.py). The quickstart CNN whose pruned copies sleep 50 ms a training step: trials
    # of 24 steps take 1.2 s or more, and at least three are left when the signal comes, so the search is still
    # running, whatever the machine's load, when it lands
    monkeypatch.setenv("FAILING_MODEL", "slow")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    path = write_study({"budget": {"n_trials": 6}, "recovery": {"steps": 24, "batch_size": 64},
                        "model": {"name": "tests.failing_models:fails_when_pruned", "kwargs": {"width": 8},
                                  "base_training": {"epochs": 4, "lr": 0.05, "batch_size": 64}}})
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    proc = start("search", path, "--workers", 2)

    def mid_search() -> bool:
        """A trial done and another running, with at least three of the six still to run (seconds of work
        left): the signal lands inside the search, not after its last trial."""
        states = [t.state for t in trials(url, "tiny")]
        return TrialState.RUNNING in states and 1 <= states.count(TrialState.COMPLETE) <= 3

    wait_for(mid_search, proc=proc, workdir=tmp_path / "run")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "resume with: autoprune search" in err
    states = [t.state for t in trials(url, "tiny")]
    assert TrialState.RUNNING not in states, "no trial left RUNNING after a graceful stop"
    complete_before = sum(s == TrialState.COMPLETE for s in states)
    assert complete_before >= 1
    result = cli("search", path, "--workers", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sum(t.state == TrialState.COMPLETE for t in trials(url, "tiny")) == 6


def test_sqlite_study_refuses_a_second_machine(write_study, tmp_path):
    path = write_study({"budget": {"n_trials": 1}})
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    assert cli("search", path).returncode == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    study.set_user_attr("hosts", ["another-machine"])
    result = cli("search", path, "--n-trials", 2)
    assert result.returncode == 2
    assert "PostgreSQL" in result.stderr and len(result.stderr.strip().splitlines()) == 1
