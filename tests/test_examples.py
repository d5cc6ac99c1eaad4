"""The examples, run as a user runs them (``python examples/<name>.py --small`` in a fresh folder): each ends
without error and prints or writes what its docstring promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", AUTOPRUNE_HUGE_PAGES="0")
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--small"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_segmentation_example_searches_by_mean_iou_and_exports_a_checked_onnx_model(tmp_path):
    out = _run("segmentation.py", tmp_path)
    assert "mean_iou" in out.splitlines()[1]  # the front's table names the score
    report = json.loads((tmp_path / "runs" / "segmentation" / "final" / "report.json").read_text())
    assert report["score_name"] == "mean_iou"
    assert 0.3 < report["base"]["test_accuracy"] <= 1 and 0.3 < report["final"]["test_accuracy"] <= 1
    assert report["final"]["macs"] < report["base"]["macs"] / 1.4
    assert report["exports"]["onnx"]["max_abs_diff"] < 1e-3
    assert "mean_iou" in (tmp_path / "runs" / "segmentation" / "final" / "report.html").read_text()


@pytest.mark.slow
def test_the_classifier_example_and_then_the_resume_example(tmp_path):
    out = _run("classifier.py", tmp_path)
    assert "accuracy" in out and "picked trial" in out
    report = json.loads((tmp_path / "runs" / "classifier" / "final" / "report.json").read_text())
    assert report["final"]["test_accuracy"] > 0.8 and report["exports"]["onnx"]["max_abs_diff"] < 1e-3
    resumed = _run("resume.py", tmp_path)
    assert "cheapest with accuracy >= " in resumed and "rebuilt" in resumed
    import optuna

    study = optuna.load_study(study_name="classifier", storage=f"sqlite:///{tmp_path / 'runs/classifier/study.db'}")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 7  # 5, then 2 more
