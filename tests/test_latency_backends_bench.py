"""benchmarks/latency_backends.py's pure helpers: the table and the verdict against the issue's 0.8x target."""

from __future__ import annotations

import doctest

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("latency_backends")


def _row(structure: str, target: float, macs_cut: float, **speedups: float) -> dict:
    return {"model": "m", "structure": structure, "target": target, "macs_cut": macs_cut,
            "figures": {d.replace("_", " "): {"speedup": s, "efficiency": round(s / macs_cut, 4), "reliable": True}
                        for d, s in speedups.items()}}


def test_helpers_doctests_pass(bench):
    assert doctest.testmod(bench).failed == 0


def test_verdict_reached_when_one_deployment_meets_the_goal_on_every_front_model(bench):
    rows = [_row("picks", 1.5, 1.5, torch_b1=1.0, onnxruntime_b128=1.3),
            _row("picks", 3.0, 3.0, torch_b1=2.9, onnxruntime_b128=2.5),
            _row("uniform", 3.0, 3.0, torch_b1=0.1, onnxruntime_b128=0.1)]  # not a front model: ignored
    v = bench.verdict(rows, "picks")
    assert v["best"] == "onnxruntime b128" and v["reached"] and v["missed_by"] == 0.0
    assert v["worst"] == pytest.approx(2.5 / 3.0, abs=1e-4)


def test_verdict_reports_how_far_the_best_deployment_misses(bench):
    rows = [_row("global", 2.0, 2.0, torch_b1=1.2, torch_b128=1.5),
            _row("global", 3.0, 3.0, torch_b1=2.7, torch_b128=2.1)]
    v = bench.verdict(rows, "global")
    assert not v["reached"] and v["best"] == "torch b128" and v["worst_target"] == 3.0
    assert v["missed_by"] == pytest.approx(0.1)
    assert "MISSES the 0.8x target by 0.10" in bench.verdict_line("m", v, "stand-in")
