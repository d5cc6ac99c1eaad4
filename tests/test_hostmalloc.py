"""The autoprune command puts large CPU tensors on huge pages by starting itself again once with a glibc tunable."""

from __future__ import annotations

import doctest
import os
import platform
import subprocess
import sys

import pytest

from autoprune.cli import huge_pages as hostmalloc
from autoprune.cli.huge_pages import glibc_at_least, huge_page_tunables, restart_with_huge_pages, thp_mode
from tests.conftest import load_benchmark


def test_the_examples_in_the_docstrings_hold() -> None:
    assert doctest.testmod(hostmalloc).failed == 0


@pytest.mark.parametrize("text, mode", [("[always] madvise never\n", "always"), ("always madvise [never]", "never"),
                                        ("always [madvise] never", "madvise"), ("garbage", None)])
def test_thp_mode_reads_the_bracketed_word(text: str, mode: str | None) -> None:
    assert thp_mode(text) == mode


def test_only_glibc_from_2_35_has_the_tunable() -> None:
    assert glibc_at_least(("glibc", "2.35")) and glibc_at_least(("glibc", "3.0"))
    assert not glibc_at_least(("glibc", "2.34")) and not glibc_at_least(("musl", "1.2")) and not glibc_at_least(("glibc", "x"))


def test_a_tunable_the_user_set_is_kept_and_not_overridden() -> None:
    assert huge_page_tunables({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", True) is None
    assert huge_page_tunables({"GLIBC_TUNABLES": "a=1"}, "madvise", True) == "a=1:glibc.malloc.hugetlb=1"
    assert huge_page_tunables({}, "never", True) is None and huge_page_tunables({}, "madvise", False) is None


def _fake_host(monkeypatch, tmp_path, mode_line: str) -> list:
    thp = tmp_path / "enabled"
    thp.write_text(mode_line)
    monkeypatch.setattr(hostmalloc, "THP_ENABLED", thp)
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "autoprune.cli", "search", "s.yaml"])
    calls: list = []
    monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
    return calls


def test_the_restart_runs_the_same_command_with_the_tunable_added(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("AUTOPRUNE_HUGE_PAGES", raising=False)
    calls = _fake_host(monkeypatch, tmp_path, "always [madvise] never")
    restart_with_huge_pages()
    (program, argv, env), = calls
    assert program == sys.executable and argv == [sys.executable, "-m", "autoprune.cli", "search", "s.yaml"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("mode_line, env", [("[always] madvise never", {}), ("always [madvise] never",
                                            {"AUTOPRUNE_HUGE_PAGES": "0"})])
def test_no_restart_where_it_would_change_nothing_or_is_turned_off(monkeypatch, tmp_path, mode_line, env) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    calls = _fake_host(monkeypatch, tmp_path, mode_line)
    restart_with_huge_pages()
    assert calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc_at_least(platform.libc_ver()),
                    reason="needs Linux with glibc 2.35 or later")
def test_a_real_restart_happens_once_and_the_program_sees_the_tunable() -> None:
    try:
        mode = thp_mode(hostmalloc.THP_ENABLED.read_text())
    except OSError:
        pytest.skip("no transparent huge pages on this kernel")
    code = ("import os; from autoprune.cli.huge_pages import restart_with_huge_pages; restart_with_huge_pages(); "
            "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'))")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "AUTOPRUNE_HUGE_PAGES")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()  # printed once: the restarted program does not restart again
    expected = "glibc.malloc.hugetlb=1" if mode == "madvise" else "None"
    assert line.split()[1] == expected


def test_the_allocator_benchmark_times_the_setting_the_command_makes() -> None:
    bench = load_benchmark("host_allocator")
    assert bench.SETTINGS["hugetlb"]["GLIBC_TUNABLES"] == huge_page_tunables({}, "madvise", True)
    assert bench.SETTINGS["default"] == {}


@pytest.mark.parametrize("argv, restarts", [(["autoprune", "search", "s.yaml"], True),
                                            (["autoprune", "retrain", "s.yaml", "--trial", "3"], True),
                                            (["autoprune", "status", "s.yaml"], False), (["autoprune"], False)])
def test_only_the_training_commands_restart(monkeypatch, argv, restarts) -> None:
    from autoprune.cli import app as cli

    calls: list[str] = []
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(hostmalloc, "restart_with_huge_pages", lambda: calls.append("restart"))
    monkeypatch.setattr(cli, "main", lambda: calls.append("main"))
    cli.entry()
    assert calls == (["restart", "main"] if restarts else ["main"])
