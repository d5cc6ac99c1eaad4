"""The host allocator: large CPU tensors on transparent huge pages.

glibc hands every allocation above 32 MB to the kernel with its own ``mmap`` and gives it back on ``free``, so a
CPU training step whose activations are that large (the quickstart CNN at 96 px, batch 64: 75-600 MB tensors)
maps, faults in 4 kB at a time, zeroes and unmaps them on every step: about 600,000 page faults a step, as much
system time as compute (``benchmarks/RESULTS.md``, "Host allocator"). glibc 2.35 and later can ask for transparent
huge pages for those mappings (the tunable ``glibc.malloc.hugetlb=1``), 512 times fewer faults, with no change in
how much memory is held. A tunable is read when a process starts, so the ``autoprune`` command sets it and starts
itself again, once, before it imports anything heavy (:func:`restart_with_huge_pages`). The loader workers and
``--workers`` processes inherit it.

It is skipped where it would change nothing (the kernel already gives every large mapping huge pages, or none),
on other C libraries, where the user set the tunable themselves, and with ``AUTOPRUNE_HUGE_PAGES=0``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "AUTOPRUNE_HUGE_PAGES"  # "0": leave the allocator as it is
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(text: str) -> str | None:
    """The selected transparent-huge-page mode in the kernel's ``enabled`` file (the one in brackets).

    >>> thp_mode("always [madvise] never"), thp_mode("")
    ('madvise', None)
    """
    return next((w[1:-1] for w in text.split() if w.startswith("[") and w.endswith("]")), None)


def glibc_at_least(version: tuple[str, str], want: tuple[int, int] = (2, 35)) -> bool:
    """Whether ``platform.libc_ver()``'s answer is glibc ``want`` or later.

    >>> glibc_at_least(("glibc", "2.36")), glibc_at_least(("glibc", "2.31")), glibc_at_least(("", ""))
    (True, False, False)
    """
    name, ver = version
    try:
        return name == "glibc" and tuple(int(p) for p in ver.split(".")[:2]) >= want
    except ValueError:
        return False


def huge_page_tunables(env: Mapping[str, str], mode: str | None, glibc_ok: bool) -> str | None:
    """The ``GLIBC_TUNABLES`` value that adds ``glibc.malloc.hugetlb=1`` to ``env``'s, or None where it would
    change nothing or is not wanted.

    Only the kernel's ``madvise`` mode needs it: under ``always`` large mappings get huge pages anyway, under
    ``never`` they cannot.

    Example:
        >>> huge_page_tunables({}, "madvise", True)
        'glibc.malloc.hugetlb=1'
        >>> huge_page_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", True)
        'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
        >>> huge_page_tunables({}, "always", True), huge_page_tunables({"AUTOPRUNE_HUGE_PAGES": "0"}, "madvise", True)
        (None, None)
    """
    current = env.get("GLIBC_TUNABLES", "")
    if not glibc_ok or mode != "madvise" or env.get(OPT_OUT) == "0" or TUNABLE in current:
        return None
    return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def restart_with_huge_pages() -> None:
    """Start this program again (same interpreter, arguments and process id) with huge pages for large CPU
    tensors, where :func:`huge_page_tunables` says it helps; return otherwise."""
    if not sys.platform.startswith("linux") or not getattr(sys, "orig_argv", None):
        return
    try:
        mode = thp_mode(THP_ENABLED.read_text())
    except OSError:
        return
    value = huge_page_tunables(os.environ, mode, glibc_at_least(platform.libc_ver()))
    if value is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": value})
