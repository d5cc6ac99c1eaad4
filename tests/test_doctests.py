"""Every example in the package's docstrings runs (``>>>`` lines marked ``# doctest: +SKIP`` excepted)."""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.conftest import ROOT

MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "autoprune").rglob("*.py") if ">>>" in p.read_text()
)


def test_the_package_has_doctests_to_run():
    assert len(MODULES) >= 20, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_doctests_pass(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name the shipped studies by their path from the repository root
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output)"
