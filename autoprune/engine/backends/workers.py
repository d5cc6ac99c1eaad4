"""Local worker processes for the Optuna backend (``autoprune search --workers N``).

The parent prepares the study once (trains or loads the base model, measures the reference, creates the study
in its storage), then starts N ``autoprune search ... --worker-index i`` processes on this machine against the
same storage, watches the storage for progress, and forwards Ctrl-C / SIGTERM to them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from autoprune.engine.ask_tell import study_sampler
from autoprune.engine.backends.base import SearchOptions, SearchOutcome
from autoprune.engine.backends.given_worker import write_spec
from autoprune.engine.context import StudyContext
from autoprune.engine.record import TrialRecord
from autoprune.engine.storage import create_or_load, register_host
from autoprune.engine.warm_start import enqueue_warm_start
from autoprune.errors import AutopruneError, SearchFailedError


@dataclass
class WorkerPool:
    procs: list[subprocess.Popen]
    logs: list[Path]

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass

    def wait(self, poll: Callable[[], None], interval: float = 1.0) -> list[int]:
        """Wait for every worker, calling ``poll`` between checks; Ctrl-C / SIGTERM are forwarded to the workers."""
        interrupted = False
        while self.alive():
            try:
                poll()
                time.sleep(interval)
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop now
                    self.signal_all(signal.SIGKILL)
                else:
                    interrupted = True
                    self.signal_all(signal.SIGINT)
        poll()
        return [p.returncode for p in self.procs]

    def last_line(self, i: int) -> str:
        try:
            lines = [ln for ln in self.logs[i].read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else ""


def start_workers(n: int, command: Sequence[str], log_dir: Path, threads: int,
                  env: Mapping[str, str] | None = None) -> WorkerPool:
    """Start ``n`` worker processes, ``python`` + ``command`` + ``["--worker-index", i]``, with ``threads`` torch
    threads each; ``env`` is added to their environment (secrets such as the storage URL go there, never on the
    command line)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    env = dict(os.environ, **(env or {}), OMP_NUM_THREADS=str(threads), AUTOPRUNE_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    for i in range(n):
        log = log_dir / f"worker-{i}.log"
        fh = open(log, "w")
        procs.append(subprocess.Popen([sys.executable, *command, "--worker-index", str(i)],
                                      stdout=fh, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))  # signals reach workers only through the parent
        fh.close()
        logs.append(log)
    return WorkerPool(procs, logs)


def run_local_workers(ctx: StudyContext, options: SearchOptions, on_trial: Callable[..., None]) -> SearchOutcome:
    """Create the study once, start ``options.workers`` worker processes against its storage (the URL through the
    environment) and wait for them; a worker that exits badly is an error naming it and its log."""
    study = ctx.study
    ost = create_or_load(study, None, None, study_sampler(ctx, study.config.seed), ctx.reference)
    register_host(ost, study.storage_url)
    enqueue_warm_start(ost, ctx, ctx.distributions())  # here, once: workers starting together would each enqueue them
    before = {t.number for t in ost.get_trials(deepcopy=False)}
    threads = study.config.measure.threads or max(1, (os.cpu_count() or 1) // options.workers)
    # a study file's workers repeat the command; a search from Python's read its objects from a spec file
    command = write_spec(ctx, options) if ctx.given is not None else ["-m", "autoprune.cli", *options.worker_args]
    pool = start_workers(options.workers, command, study.workdir / "logs", threads,
                         {"AUTOPRUNE_STORAGE": study.storage_url})
    try:
        codes = pool.wait(lambda: on_trial(ost))  # polls the storage about once a second
    finally:
        if ctx.given is not None:
            Path(command[-1]).unlink(missing_ok=True)
    new = [TrialRecord.from_frozen(t) for t in ost.get_trials(deepcopy=False) if t.number not in before]
    ran = sum(1 for r in new if r.skipped is None and r.state in ("COMPLETE", "FAIL", "PRUNED"))
    failed = sum(1 for r in new if r.state == "FAIL")
    bad = [(i, c) for i, c in enumerate(codes) if c not in (0, 130)]
    if bad:
        i, code = bad[0]
        err = SearchFailedError if code == SearchFailedError.exit_code else AutopruneError
        raise err(f"worker {i} exited with code {code}: {pool.last_line(i)} (log: {pool.logs[i]})")
    complete = sum(1 for t in ost.get_trials(deepcopy=False) if t.state.name == "COMPLETE")
    return SearchOutcome(ost, complete, ran, failed, interrupted=any(c == 130 for c in codes))
