"""The cli wing: the ``autoprune`` command, its tables and progress bars, and the huge-pages restart. The top
floor: it may use every wing; nothing imports it.
"""

from __future__ import annotations

from autoprune.cli.app import entry, main

__all__ = ["entry", "main"]
