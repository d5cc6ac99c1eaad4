"""File helpers every wing writes through: atomic writes (a kill leaves the old file or the new, never half of
one) and SHA-256 checksums beside cached files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a kill leaves the old file or the new."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (reports, JSON) through a temporary file and a rename."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checksummed(obj: Any, path: str | Path) -> None:
    """Save atomically with a ``.sha256`` file beside it (written after the data, so a kill leaves no match)."""
    atomic_save(obj, path)
    atomic_write_text(f"{path}.sha256", sha256_of(path))


def checksum_ok(path: str | Path) -> bool:
    """True when ``path`` exists and matches its ``.sha256`` file."""
    side = Path(f"{path}.sha256")
    return Path(path).is_file() and side.is_file() and side.read_text().strip() == sha256_of(path)
