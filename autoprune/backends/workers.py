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
from typing import Callable, Sequence


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


def start_workers(n: int, command: Sequence[str], log_dir: Path, threads: int) -> WorkerPool:
    """Start ``n`` worker processes running ``command + ["--worker-index", i]`` with ``threads`` torch threads each."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), AUTOPRUNE_THREADS=str(threads), PYTHONUNBUFFERED="1")
    for i in range(n):
        log = log_dir / f"worker-{i}.log"
        fh = open(log, "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "autoprune.cli", *command, "--worker-index", str(i)],
                                      stdout=fh, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))  # signals reach workers only through the parent
        fh.close()
        logs.append(log)
    return WorkerPool(procs, logs)
