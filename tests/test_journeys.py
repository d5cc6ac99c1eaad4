"""The documented journeys, run end to end with the documented commands on fresh temporary folders.

Every study here lives in a folder that does not exist before the command runs: the paths a new user takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from autoprune.cli import main
from autoprune.models.factory import create_model
from tests.conftest import CIFAR, ROOT, TINY_SPACE, TINY_STUDY, WEIGHTS, need_shared


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _study_with_checkpoint(tmp_path, workdir):
    """A tiny study whose base model is the user's own checkpoint (nothing trained, nothing cached before)."""
    torch.manual_seed(0)
    ckpt = tmp_path / "mine" / "cnn.pt"
    ckpt.parent.mkdir()
    torch.save(create_model("quickstart_cnn", 10, width=8).state_dict(), ckpt)
    study = dict(TINY_STUDY, budget={"n_trials": 1})
    study.pop("workdir", None)
    if workdir is not None:
        study["workdir"] = str(workdir)
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


def test_bring_a_checkpoint_search_status_pareto_select_retrain_evaluate_report(tmp_path, monkeypatch):
    """The README's tour with the user's own checkpoint, from a fresh working folder (runs/ does not exist)."""
    path, ckpt = _study_with_checkpoint(tmp_path, workdir=None)
    work = tmp_path / "fresh"
    work.mkdir()
    monkeypatch.chdir(work)  # the study's default folder is runs/<name>, relative to where the user runs
    assert run("search", path, "--checkpoint", ckpt, "--n-trials", 3).exit_code == 0
    status = json.loads(run("status", path, "--checkpoint", ckpt, "--json").stdout)
    assert status["trials"]["COMPLETE"] == 3
    front = json.loads(run("pareto", path, "--checkpoint", ckpt, "--json").stdout)["front"]
    pick = json.loads(run("select", path, "--checkpoint", ckpt, "--knee", "--json").stdout)
    assert pick["trial"] in {e["trial"] for e in front} and pick["reason"]
    result = run("retrain", path, "--checkpoint", ckpt, "--trial", pick["trial"], "--epochs", 1)
    assert result.exit_code == 0, result.output
    final = work / "runs" / "tiny" / f"final-{pick['trial']}"
    report = json.loads((final / "report.json").read_text())
    assert report["final"]["macs"] == pick["macs"]
    assert {"model.pt", "model.onnx", "model.torchscript.pt", "report.html"} <= {p.name for p in final.iterdir()}
    evaluated = json.loads(run("evaluate", path, "--checkpoint", ckpt, "--trial", pick["trial"], "--json").stdout)
    assert evaluated["macs"] == pick["macs"] and evaluated["split"] == "val"
    assert run("report", path, "--checkpoint", ckpt, "--trial", pick["trial"]).exit_code == 0
    assert (work / "runs" / "tiny" / "report" / "study.html").is_file()


FACTORIES = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset


def blobs(n: int = 240):
    """Two classes of 3x12x12 images told apart by their mean brightness."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = (torch.rand(n, 3, 12, 12, generator=g) * 0.5 + 0.5 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    return TensorDataset(x[: n * 3 // 4], y[: n * 3 // 4]), TensorDataset(x[n * 3 // 4:], y[n * 3 // 4:])


def small_cnn(num_classes: int = 2, width: int = 8):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''


def test_your_own_model_and_data_factories_with_the_installed_command(tmp_path):
    """``model.name`` and ``data.name`` as ``package.module:factory``, the module beside the study in the working
    folder, no PYTHONPATH (as the docs say); the ``autoprune`` command itself in a fresh folder."""
    (tmp_path / "mine.py").write_text(FACTORIES)
    study = dict(TINY_STUDY, budget={"n_trials": 2}, search_space="space.yaml")
    study["model"] = {"name": "mine:small_cnn", "base_training": {"epochs": 2, "lr": 0.05, "batch_size": 32}}
    study["data"] = {"name": "mine:blobs", "val_fraction": 0.25, "num_workers": 0}
    study["recovery"] = {"bn_recalibration_batches": 2, "steps": 4, "batch_size": 32}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"AUTOPRUNE_HUGE_PAGES": "0"}
    exe = Path(sys.executable).parent / "autoprune"
    for args in (["search", "study.yaml"], ["pareto", "study.yaml", "--json"]):
        done = subprocess.run([str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    front = json.loads(done.stdout)["front"]
    assert front and all(e["macs"] > 0 for e in front)
    assert (tmp_path / "runs" / "tiny" / "study.db").is_file()


@pytest.mark.shared
@pytest.mark.slow
def test_the_documented_cifar_search_on_a_fresh_machine(tmp_path):
    """docs/data-and-models.md's CIFAR-10 search (the pretrained ResNet-20 as the checkpoint), run where runs/ does
    not exist; one trial instead of four. It died before its first trial on 76147d6."""
    need_shared(CIFAR, WEIGHTS / "resnet20.pt")
    command = ["search", ROOT / "studies" / "cifar10_resnet20.yaml", "--n-trials", 1, "--set", "recovery.steps=30",
               "--set", "fidelity.promote_steps=0", "--set", "measure.latency_batch_size=1",
               "--checkpoint", WEIGHTS / "resnet20.pt", "--data-root", CIFAR]
    exe = Path(sys.executable).parent / "autoprune"
    done = subprocess.run([str(exe), *map(str, command)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, AUTOPRUNE_HUGE_PAGES="0"))
    assert done.returncode == 0, done.stderr[-2000:]
    trials = optuna.load_study(study_name="cifar10_resnet20",
                               storage=f"sqlite:///{tmp_path / 'runs' / 'cifar10_resnet20' / 'study.db'}").trials
    states = [t.state for t in trials]  # the warm starts are enqueued first; one of them ran
    assert states.count(TrialState.COMPLETE) == 1 and set(states) <= {TrialState.COMPLETE, TrialState.WAITING}
