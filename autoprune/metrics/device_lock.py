"""A per-machine, per-device lock that lets latency be measured while no other worker computes.

Training steps hold the lock *shared* (many workers at once); a latency measurement holds it *exclusive*, so it
runs on an otherwise idle device. A gate lock gives the measurement priority: once it waits, no new step starts,
and it waits at most for the steps already running. POSIX ``flock`` locks are released if a process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator


class DeviceLock:
    """Shared/exclusive lock for one device on this machine (``/tmp/autoprune-<device>.lock``)."""

    def __init__(self, device: str = "cpu", directory: str | Path | None = None) -> None:
        base = Path(directory or tempfile.gettempdir())
        name = device.replace(":", "-")
        self._gate_path = base / f"autoprune-{name}.gate"
        self._work_path = base / f"autoprune-{name}.lock"
        self._gate = os.open(self._gate_path, os.O_RDWR | os.O_CREAT, 0o666)
        self._work = os.open(self._work_path, os.O_RDWR | os.O_CREAT, 0o666)
        self._shared_depth = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Held around each compute step (a fine-tune step, an evaluation)."""
        if self._shared_depth:
            self._shared_depth += 1
            try:
                yield
            finally:
                self._shared_depth -= 1
            return
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._work, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        self._shared_depth = 1
        try:
            yield
        finally:
            self._shared_depth = 0
            fcntl.flock(self._work, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held around a latency measurement: every other worker on this device waits."""
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._work, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._work, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._gate, self._work):
            with contextlib.suppress(OSError):
                os.close(fd)


class NoLock:
    """The same interface, locking nothing (a single worker)."""

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass
