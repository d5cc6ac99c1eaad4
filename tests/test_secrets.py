"""A storage URL's password never reaches the screen, the logs or the process list."""

from __future__ import annotations

import os
import subprocess
import uuid

import optuna
import pytest
from click.testing import CliRunner

from autoprune.cli import main

PG = os.environ.get("AUTOPRUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "s3cret-pw"


@pytest.fixture
def pg_url_with_password():
    """The test database's URL with a password added (the server trusts local connections and ignores it)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    try:
        psycopg.connect(PG, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL answers at {PG}: {' '.join(str(exc).split())}")
    user_host = PG.split("://", 1)[1]
    user, _, host = user_host.partition("@")
    name = f"secrets-{uuid.uuid4().hex[:8]}"
    yield f"postgresql://{user}:{SECRET}@{host}", name
    try:
        optuna.delete_study(study_name=name, storage=PG)
    except KeyError:
        pass


@pytest.mark.slow
def test_a_search_with_workers_keeps_the_password_out_of_banner_logs_and_argv(write_study, pg_url_with_password,
                                                                               monkeypatch):
    url, name = pg_url_with_password
    seen: list[tuple[list[str], dict]] = []
    real_popen = subprocess.Popen

    def recording_popen(args, **kwargs):
        seen.append((list(args), dict(kwargs.get("env") or {})))
        return real_popen(args, **kwargs)

    import autoprune.engine.backends.workers as workers

    monkeypatch.setattr(workers.subprocess, "Popen", recording_popen)
    path = write_study({"budget": {"n_trials": 2}})
    result = CliRunner().invoke(main, ["search", str(path), "--storage", url, "--study-name", name, "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert ":***@" in result.stderr  # the banner shows the URL, masked
    assert len(seen) == 2
    for argv, env in seen:
        assert not any(SECRET in a for a in argv), argv  # the process list shows no password
        assert "--storage" not in argv
        assert env["AUTOPRUNE_STORAGE"] == url  # the workers get it through their environment
    logs = list((path.parent / "run" / "logs").glob("worker-*.log"))
    assert len(logs) == 2 and not any(SECRET in p.read_text() for p in logs)
    done = optuna.load_study(study_name=name, storage=PG).get_trials()
    assert sum(t.state.name == "COMPLETE" for t in done) == 2
