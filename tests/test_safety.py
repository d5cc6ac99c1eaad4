"""Safety: files autoprune reads cannot run code, and a study file cannot name code to run except a model or data
factory (`package.module:factory`).

Each test plants a payload that would create a marker file if it ever ran, and checks that autoprune refuses the
input with one line and exit code 2, and that the marker was never created.
"""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from autoprune.cli import main
from autoprune.errors import AutopruneError
from autoprune.models.factory import QuickstartCNN
from autoprune.pruning.saving import FORMAT, load_pruned


class Payload:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("autoprune: error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_a_checkpoint_carrying_code_is_refused_and_never_run(write_study, tmp_path):
    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"features.0.weight": Payload(marker)}, evil)
    study = write_study({"model": {"name": "quickstart_cnn", "kwargs": {"width": 8}, "checkpoint": str(evil)}})
    line = _one_error_line(CliRunner().invoke(main, ["search", str(study)]))
    assert "model.checkpoint" in line and str(evil) in line
    assert not marker.exists() and not (tmp_path / "run" / "study.db").exists()


def test_a_saved_pruned_model_carrying_code_is_refused_and_never_run(tmp_path):
    marker, evil = tmp_path / "ran", tmp_path / "model.pt"
    torch.save({"format": FORMAT, "history": Payload(marker), "state_dict": {}, "meta": {}}, evil)
    with pytest.raises(AutopruneError, match="cannot read pruned model"):
        load_pruned(evil, QuickstartCNN())
    assert not marker.exists()


def test_a_study_file_with_python_yaml_tags_is_refused_and_never_run(write_study, tmp_path):
    marker = tmp_path / "ran"
    study = write_study()
    doc = study.read_text() + f"\nextra: !!python/object/apply:os.system ['touch {marker}']\n"
    study.write_text(doc)
    line = _one_error_line(CliRunner().invoke(main, ["search", str(study)]))
    assert str(study) in line
    assert not marker.exists() and not (tmp_path / "run").exists()
