"""The documented journeys, run end to end with the documented commands on fresh temporary folders.

Every study here lives in a folder that does not exist before the command runs: the paths a new user takes.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner

from autoprune.cli import main
from autoprune.models import create_model
from tests.conftest import TINY_SPACE, TINY_STUDY


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _study_with_checkpoint(tmp_path, workdir):
    """A tiny study whose base model is the user's own checkpoint (nothing trained, nothing cached before)."""
    torch.manual_seed(0)
    ckpt = tmp_path / "mine" / "cnn.pt"
    ckpt.parent.mkdir()
    torch.save(create_model("quickstart_cnn", 10, width=8).state_dict(), ckpt)
    study = dict(TINY_STUDY, workdir=str(workdir), budget={"n_trials": 1})
    study["model"] = {"name": "quickstart_cnn", "kwargs": {"width": 8}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path, ckpt


def test_search_with_a_checkpoint_in_a_study_folder_that_does_not_exist_yet(tmp_path):
    workdir = tmp_path / "not" / "there" / "yet"
    path, ckpt = _study_with_checkpoint(tmp_path, workdir)
    assert not workdir.exists()
    result = run("search", path, "--checkpoint", ckpt, "--n-trials", 1)
    assert result.exit_code == 0, result.output
    assert list(workdir.glob("teacher-*.pt")), "the teacher stream is cached in the new study folder"
    assert not list(workdir.glob("*.partial")), "the scratch file is removed"
